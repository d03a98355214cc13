"""Writing a session to a file: the table of formats (chosen by the file's suffix) and the exports themselves.

Markdown carries the branch on screen with per-token probabilities, HTML a standalone heat-coloured page;
the session itself is JSON, and an .svg is a screenshot the lab screen takes. The lab, the lab screen and
`tokenlab export` all choose from `EXPORT_FORMATS`.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tokenlab.files import write_text_atomic
from tokenlab.lab.session import Session, dumps
from tokenlab.lab.step import Step
from tokenlab.render import heat_color, prob_heat, visible
from tokenlab.sampling import SamplerParams


def _knobs(params: SamplerParams) -> str:
    defaults = SamplerParams().to_dict()
    changed = [f"{name}={value}" for name, value in params.to_dict().items() if defaults.get(name) != value]
    return ", ".join(changed) or "llama.cpp defaults"


def _prob(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.4f}"


def _code_cell(text: str) -> str:
    """Token text as a Markdown table cell in a code span: shown literally (no HTML, no markup), one line."""
    return "`" + visible(text).replace("`", "'").replace("|", "\\|") + "`"


def to_markdown(session: Session) -> str:
    """The branch on screen as Markdown: the text, then every token with its probabilities and rank.

    Prompt, model name and text are HTML-escaped: a Markdown viewer renders raw HTML, and they come from
    the model and the user, so a `<script>` in them must stay text.
    """
    steps = session.current_steps()
    lines = [
        "# tokenlab session",
        "",
        f"- model: {html.escape(session.model, quote=False)}",
        f"- prompt: {html.escape(repr(session.prompt), quote=False)} ({'chat' if session.chat else 'raw'})",
        f"- knobs: {html.escape(_knobs(session.params), quote=False)}",
        f"- seed: {session.seed} · runs in the tree: {session.tree.runs}",
        "",
        "## Text",
        "",
        html.escape("".join(step.text for step in steps), quote=False),
        "",
        "## Tokens",
        "",
        "| # | token | raw p | final p | rank | entropy (bits) | top alternatives |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for step in steps:
        others = ", ".join(f"{_code_cell(c.text)} {c.prob:.3f}" for c in step.top[:3] if c.id != step.id)
        lines.append(f"| {step.index} | {_code_cell(step.piece)} | {_prob(step.prob)} | {_prob(step.final_prob)} | "
                     f"{step.rank or '—'} | {_prob(step.entropy)} | {others} |")
    return "\n".join(lines) + "\n"


# Odd tokens are darkened with an inset shadow, not a filter: a filter makes each token a stacking
# context of its own, which would draw its tooltip under the tokens that follow it.
_STYLE = """
body { font-family: ui-monospace, Menlo, Consolas, monospace; background: #111; color: #ddd; margin: 2em; }
h1 { font-size: 1.2em; } .meta { color: #999; margin-bottom: 1.5em; }
.text { line-height: 1.9; white-space: pre-wrap; max-width: 80ch; }
.t { position: relative; color: #000; padding: 1px 0; border-radius: 2px; cursor: default; }
.t:nth-child(odd) { box-shadow: inset 0 0 0 100vmax rgba(0, 0, 0, 0.12); }
.t:hover { z-index: 2; }
.t .tip { display: none; position: absolute; left: 0; top: 1.7em; z-index: 2; background: #222;
  color: #ddd; border: 1px solid #555; padding: 4px 6px; white-space: pre; font-size: 0.85em; }
.t:hover .tip { display: block; }
.tip table { border-collapse: collapse; } .tip td { padding: 0 6px; text-align: right; }
.tip td.k { text-align: left; } .tip tr.c { color: #fff; font-weight: bold; }
.legend span { color: #000; padding: 0 6px; margin-right: 2px; }
"""


def _tip(step: Step) -> str:
    rows = "".join(
        f"<tr class=\"{'c' if c.id == step.id else ''}\"><td class=\"k\">{html.escape(repr(visible(c.text)))}</td>"
        f"<td>{c.prob:.4f}</td><td>{_prob(c.final_prob)}</td></tr>"
        for c in step.top[:10]
    )
    head = (f"step {step.index} · p {_prob(step.prob)} · final {_prob(step.final_prob)} · rank {step.rank or '—'}"
            f" · H {_prob(step.entropy)} bits")
    return (f"<span class=\"tip\">{html.escape(head)}<table><tr><td class=\"k\">token</td><td>raw</td>"
            f"<td>final</td></tr>{rows}</table></span>")


def to_html(session: Session) -> str:
    """A standalone page (no external assets): heat-coloured tokens with a table of candidates on hover."""
    steps = session.current_steps()
    spans = []
    for step in steps:
        text = step.text if not step.eog else f"⟨{step.piece}⟩"
        if not text:
            continue
        colour = heat_color(prob_heat(step.final_prob if math.isnan(step.prob) else step.prob))
        spans.append(f"<span class=\"t\" style=\"background:{colour}\">{html.escape(text)}{_tip(step)}</span>")
    legend = "".join(
        f"<span style=\"background:{heat_color(prob_heat(p))}\">{label}</span>"
        for label, p in (("&lt;0.01%", 1e-5), ("0.1%", 1e-3), ("1%", 1e-2), ("10%", 0.1), ("50%", 0.5), ("100%", 1.0))
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>tokenlab · {html.escape(session.prompt[:60])}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>tokenlab · {html.escape(session.model)}</h1>\n"
        f"<div class=\"meta\">prompt: {html.escape(session.prompt)}<br>knobs: {html.escape(_knobs(session.params))}"
        f" · seed {session.seed}<br><span class=\"legend\">probability: {legend}</span></div>\n"
        f"<div class=\"text\">{''.join(spans)}</div>\n</body>\n</html>\n"
    )


# -- the formats, chosen by a file's suffix ---------------------------------------------------------


@dataclass(frozen=True)
class FileFormat:
    """One way to write a lab's session to a file: its name, the suffixes that choose it, and its writer."""

    name: str
    """What `tokenlab export --format` calls it."""
    suffixes: tuple[str, ...]
    """File name endings (lower case) that choose it."""
    description: str
    """What the file holds, in a few words (for help texts and error messages)."""
    render: Callable[[Session], str] | None
    """The file's text for a session; None for a format the lab screen writes from what it shows."""
    loadable: bool = False
    """Whether `tokenlab lab --load` opens the file again (only the session itself)."""

    @property
    def from_screen(self) -> bool:
        """Whether the lab screen writes it (a screenshot), not a writer of sessions."""
        return self.render is None


SESSION_FORMAT = FileFormat("json", (".json",), "the session: prompt, knobs and every run, to load again",
                            dumps, loadable=True)
"""The session itself, and what a file name without a suffix gets."""

EXPORT_FORMATS: dict[str, FileFormat] = {
    file_format.name: file_format
    for file_format in (
        SESSION_FORMAT,
        FileFormat("md", (".md", ".markdown"), "text and per-token probabilities", to_markdown),
        FileFormat("html", (".html", ".htm"), "a standalone heat-coloured page with hover tables", to_html),
        FileFormat("svg", (".svg",), "a screenshot of the lab", None),
    )
}
"""Every format a session is written in, by name; `format_for` picks one by a file's suffix."""

EXPORT_CHOICES: tuple[str, ...] = tuple(
    name for name, file_format in EXPORT_FORMATS.items() if not file_format.loadable and not file_format.from_screen
)
"""What `tokenlab export` renders from a saved session file (md, html)."""


def valid_suffixes() -> str:
    """Every suffix that chooses a format, in words: '.json (the session), .md, ... or .svg'."""
    suffixes = [f"{suffix} (the session)" if fmt.loadable else suffix
                for fmt in EXPORT_FORMATS.values() for suffix in fmt.suffixes]
    return ", ".join(suffixes[:-1]) + " or " + suffixes[-1]


def format_for(path: str | os.PathLike[str], *, default: FileFormat | None = None) -> FileFormat:
    """The format a file name asks for by its suffix (case aside); a name without one is the session.

    Any other suffix gets `default`, or without one a ValueError naming the valid suffixes.
    """
    suffix = Path(path).suffix.lower()
    if not suffix:
        return SESSION_FORMAT
    for file_format in EXPORT_FORMATS.values():
        if suffix in file_format.suffixes:
            return file_format
    if default is not None:
        return default
    raise ValueError(f"{os.fspath(path)}: tokenlab writes no {suffix!r} files; end the name in {valid_suffixes()}")


def write_session(session: Session, path: str | os.PathLike[str]) -> Path:
    """Write `session` to `path` (atomically) in the format its suffix asks for; returns the file written."""
    file_format = format_for(path)
    if file_format.render is None:
        raise ValueError(f"{os.fspath(path)}: {file_format.description} is taken by the lab screen, "
                         "not written from a session")
    return write_text_atomic(path, file_format.render(session))
