"""Chat templates from GGUF metadata, rendered in a jinja2 sandbox bounded in time and size.

A model file is untrusted input: its template may be broken, may loop for hours or may ask for
gigabytes. Rendering here turns every such failure into one ChatTemplateError line that names the
template as the cause and `--raw` as the way out.
"""

from __future__ import annotations

import datetime
import operator
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from tokenlab.engine.llama import EngineError

TEMPLATE_SECONDS = 2.0
"""Longest a chat template may take to render (real templates take about a millisecond)."""
TEMPLATE_MAX_CHARS = 1_000_000
"""Most characters a template may produce beyond the prompt itself."""

_FRAME_FILE = "<template>"  # the file name jinja2 gives the code it compiles templates to


class ChatTemplateError(EngineError):
    """The model's chat template failed to render; str() is one line naming the template and --raw."""


class _TemplateStop(Exception):
    """Raised inside a render that ran too long, grew too large or called raise_exception()."""


def _environment(max_chars: int) -> Any:
    """An immutable jinja2 sandbox whose `*`, `**` and range() cannot make huge values."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
            if operator_name == "**":
                if isinstance(right, int) and abs(right) > 4096 and not isinstance(left, float):
                    raise _TemplateStop(f"{left!r} ** {right!r} is too large")
                return operator.pow(left, right)
            for sequence, times in ((left, right), (right, left)):
                if isinstance(sequence, (str, bytes, list, tuple)) and isinstance(times, int):
                    if len(sequence) * max(times, 0) > max_chars:
                        raise _TemplateStop(f"a value of {len(sequence) * times:,} items is too large")
            return operator.mul(left, right)

    environment = BoundedSandbox(trim_blocks=True, lstrip_blocks=True)
    environment.globals["range"] = safe_range  # at most 100,000 items (nested loops hit the time limit)
    return environment


def render_chat(
    template: str,
    messages: list[dict[str, str]],
    *,
    bos_token: str,
    eos_token: str,
    model_name: str,
    seconds: float = TEMPLATE_SECONDS,
    max_chars: int = TEMPLATE_MAX_CHARS,
) -> str:
    """The template rendered for `messages` with a generation prompt; ChatTemplateError on any failure."""
    import jinja2

    budget = max_chars + sum(len(message["content"]) for message in messages)

    def fail(reason: str) -> ChatTemplateError:
        reason = " ".join(reason.split())
        if len(reason) > 160:
            reason = reason[:157] + "…"
        return ChatTemplateError(
            f"the chat template in {model_name} failed ({reason}); "
            "run with --raw to feed the prompt without it"
        )

    def raise_exception(message: str) -> None:
        raise _TemplateStop(f"it raised: {message}")

    def strftime_now(date_format: str) -> str:
        return datetime.datetime.now().strftime(date_format)

    deadline = time.monotonic() + seconds
    previous_trace = sys.gettrace()

    def trace(frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        # every call, and every line of the compiled template, checks the clock: loops that emit
        # nothing cannot run away
        if time.monotonic() > deadline:
            raise _TemplateStop(f"it ran longer than {seconds:g} s")
        return trace if frame.f_code.co_filename == _FRAME_FILE else None

    pieces: list[str] = []
    size = 0
    try:
        compiled = _environment(budget).from_string(template)
        sys.settrace(trace)
        try:
            for piece in compiled.generate(
                messages=messages,
                bos_token=bos_token,
                eos_token=eos_token,
                add_generation_prompt=True,
                raise_exception=raise_exception,
                strftime_now=strftime_now,
            ):
                size += len(piece)
                if size > budget:
                    raise _TemplateStop(f"its output passed {budget:,} characters")
                pieces.append(piece)
        finally:
            sys.settrace(previous_trace)
    except _TemplateStop as exc:
        raise fail(str(exc)) from None
    except jinja2.TemplateSyntaxError as exc:
        raise fail(f"syntax error on line {exc.lineno}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise fail(f"{type(exc).__name__}: {exc}") from None
    except MemoryError:
        raise fail("it ran out of memory") from None
    except RecursionError:
        raise fail("it recursed too deeply") from None
    except Exception as exc:  # noqa: BLE001 - any error of an untrusted template is the template's
        raise fail(f"{type(exc).__name__}: {exc}") from None
    return "".join(pieces)
