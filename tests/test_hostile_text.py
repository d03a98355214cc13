"""Text from models, sessions and users never acts as rich markup, terminal commands or HTML."""

from __future__ import annotations

import dataclasses
import os
import pty
import select
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from tokenlab.render import terminal_safe, visible

HOSTILE_NAME = "[/][link=h]\x1b[2J\x1b]0;t\x07\x1b]8;;u\x1b\\\x9b"
"""A model name (31 bytes: the default model's is as long) with a closing tag (a crash for rich), a link, then
clear-screen, set-title, an OSC-8 link and a C1 CSI."""


def with_general_name(source: Path, target: Path, name: str) -> Path:
    """A copy of a GGUF whose general.name is `name`, padded with spaces to the old name's length.

    Keeping the length keeps every later byte (tensor infos, aligned tensor data) where it was.
    """
    data = source.read_bytes()
    key = b"general.name"
    at = data.index(struct.pack("<Q", len(key)) + key + struct.pack("<I", 8)) + 8 + len(key) + 4  # type 8: string
    (old_length,) = struct.unpack("<Q", data[at:at + 8])
    value = name.encode()
    assert len(value) <= old_length, f"the test name ({len(value)} bytes) must fit the model's ({old_length} bytes)"
    target.write_bytes(data[:at + 8] + value.ljust(old_length, b" ") + data[at + 8 + old_length:])
    return target


@pytest.fixture(scope="module")
def hostile_model(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_general_name(model_path, tmp_path_factory.mktemp("hostile") / "hostile.gguf", HOSTILE_NAME)


def tokenlab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tokenlab", *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "COLUMNS": "200", "FORCE_COLOR": "1"})


def test_inspect_shows_a_hostile_model_name_as_text(hostile_model: Path) -> None:
    result = tokenlab("inspect", "The capital of France is", "--raw", "-m", str(hostile_model), "--top-n", "3",
                      "--stages")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "[/]" in result.stdout  # shown, not parsed as a closing tag
    assert "\\x1b]0;" in result.stdout and "\x1b]0;" not in result.stdout  # set-title shown, not sent
    assert "\x1b]8;" not in result.stdout and "\x1b[2J" not in result.stdout and "\x9b" not in result.stdout


def test_error_messages_quoting_markup_stay_one_line(model_path: Path) -> None:
    result = tokenlab("generate", "Hi", "--raw", "-n", "1", "--logit-bias", "[/][bold]x\x1b[2J=1")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "[/][bold]x\\x1b[2J" in lines[0], result.stderr


def test_generate_on_a_terminal_shows_control_characters(engine) -> None:
    escape = next(i for i in range(engine.n_vocab) if engine.piece(i) == b"\x1b")
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenlab", "generate", "Hi", "--raw", "-n", "3", "--seed", "1",
         "--logit-bias", f"#{escape}=100"],
        stdout=terminal, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env={**os.environ},
    )
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    process.wait(30)
    os.close(controller)
    assert process.returncode == 0
    assert b"\\x1b\\x1b\\x1b" in output and b"\x1b" not in output


def test_generate_into_a_pipe_keeps_the_text_exact(engine) -> None:
    escape = next(i for i in range(engine.n_vocab) if engine.piece(i) == b"\x1b")
    result = tokenlab("generate", "Hi", "--raw", "-n", "2", "--seed", "1", "--logit-bias", f"#{escape}=100")
    assert result.returncode == 0 and result.stdout == "\x1b\x1b\n", (result.stdout, result.stderr)


def test_terminal_safe_and_visible_cover_c0_c1_and_del() -> None:
    assert terminal_safe("a\nb\tc\x1b[2J\x07\x9b\x7f\r") == "a\nb\tc\\x1b[2J\\x07\\x9b\\x7f\\r"
    assert visible("\x1b\x9b\n") == "\\x1b\\x9b\\n"


def test_stage_table_shows_markup_in_tokens_as_text() -> None:
    from tokenlab.render import stage_view_tables

    row = SimpleNamespace(name="top_k", kept=2, mass_kept=0.9, cutoff="k=2", details={}, probs=[0.6, 0.4])
    view = SimpleNamespace(n_vocab=10, rows=[row], candidate_texts=["[/]", "[link=https://e.x]x"],
                           raw_probs=[0.5, 0.3])
    console = Console(record=True, width=120, color_system=None)
    for table in stage_view_tables(view):
        console.print(table)
    shown = console.export_text()
    assert "'[/]'" in shown and "'[link=https://e.x]x'" in shown


def test_markdown_export_escapes_html(engine) -> None:
    from test_session import make_session

    from tokenlab.export import to_markdown

    session = dataclasses.replace(make_session(engine), prompt="<script>alert(1)</script>",
                                  model="<img src=x onerror=alert(2)>")
    text = to_markdown(session)
    assert "<script>" not in text and "<img" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;img src=x onerror=alert(2)&gt;" in text


def test_markdown_code_cells_cannot_be_closed_by_a_token() -> None:
    from tokenlab.export import _code_cell

    cell = _code_cell("`<script>|x\n")
    assert cell == "`'<script>\\|x\\n`" and cell.count("`") == 2


def test_hostile_model_name_in_a_copy_is_read_by_llama_cpp(hostile_model: Path) -> None:
    from tokenlab.engine import Engine, EngineOptions

    loaded = Engine(hostile_model, EngineOptions(n_ctx=256))
    try:
        assert loaded.name.startswith("[/]") and "\x1b" in loaded.name  # the probe really is hostile
    finally:
        loaded.close()


def test_the_lab_shows_a_token_control_characters() -> None:
    from tokenlab.lab.step import Step
    from tokenlab.tui.widgets.token_view import token_label

    def step(text: str, *, eog: bool = False) -> Step:
        return Step(index=0, id=1, piece=text, text="" if eog else text, logit=0.0, prob=0.5, final_prob=0.5, rank=1,
                    entropy=1.0, final_entropy=1.0, top=(), eog=eog)

    assert token_label(step("a\x1b]0;title\x07\nb")) == "a\\x1b]0;title\\x07↵\nb"
    assert token_label(step("\x1b[2J", eog=True)) == "⟨\\x1b[2J⟩"
