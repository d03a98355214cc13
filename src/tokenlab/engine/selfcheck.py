"""Does the installed llama.cpp run on this CPU? Load a model and decode, in a subprocess that may crash.

A build for the wrong instruction set dies with SIGILL on its first matmul, which would take the
asking process with it; the check therefore runs in a child and reads how it ended. `scripts/setup`
runs it before recording an install, and `tokenlab doctor` runs it for bug reports.

`python -m tokenlab.engine.selfcheck [--model PATH] [--setup]` prints one line and exits 0 when the
build decodes, 1 when it does not.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SIMULATE_ENV = "TOKENLAB_SELFCHECK_SIMULATE"
"""Set to a signal name (e.g. SIGILL) to make the child die that way while decoding: tests the reporting."""

BATCH_PROMPT = "The capital of France is Paris. The capital of Italy is"
SINGLE_TOKENS = 4
TIMEOUT_S = 180.0

_SIGNAL_MEANING = {
    "SIGILL": "an instruction this CPU cannot run: the build targets a newer processor",
    "SIGSEGV": "a memory access fault inside llama.cpp",
    "SIGBUS": "a bus error inside llama.cpp",
    "SIGFPE": "an arithmetic fault inside llama.cpp",
    "SIGABRT": "llama.cpp aborted",
    "SIGKILL": "killed from outside, often by the out-of-memory killer",
}


@dataclass(frozen=True)
class DecodeCheck:
    """How the decode check ended."""

    ok: bool
    detail: str
    """One line: what was decoded, or what went wrong while doing what."""
    seconds: float
    signal: str | None = None
    """The signal that killed the child, when one did."""

    def to_dict(self) -> dict[str, object]:
        """The check as JSON-ready data."""
        return asdict(self)


def _child(model_path: str) -> None:
    """Run in the subprocess: load, decode a batch, then single tokens; report each phase as it starts."""

    def phase(text: str) -> None:
        print(json.dumps({"phase": text}), flush=True)

    phase("loading the model")
    from tokenlab.engine.llama import Engine, EngineOptions

    engine = Engine(model_path, EngineOptions(n_ctx=256))
    prompt = engine.tokenize(BATCH_PROMPT)
    phase(f"decoding a batch of {len(prompt)} tokens")
    simulated = os.environ.get(SIMULATE_ENV)
    if simulated:
        os.kill(os.getpid(), signal.Signals[simulated])
        time.sleep(5)  # a signal that does not kill (ignored) falls through to the real check
    logits = engine.evaluate(prompt)
    for index in range(SINGLE_TOKENS):
        phase(f"decoding single token {index + 1} of {SINGLE_TOKENS}")
        logits = engine.append(int(logits.argmax()))
    if np.isnan(logits).any() or not logits.any():
        raise RuntimeError("llama.cpp returned NaN or all-zero logits")
    text = engine.detokenize(engine.tokens[len(prompt):])
    print(json.dumps({"done": f"decoded a {len(prompt)}-token batch and {SINGLE_TOKENS} single tokens "
                              f"(greedy continuation {text!r})"}), flush=True)
    engine.close()


def run_decode_check(model_path: str | Path, *, timeout: float = TIMEOUT_S) -> DecodeCheck:
    """Load `model_path` in a subprocess, decode a batch and single tokens, and say how it ended."""
    start = time.monotonic()
    code = f"from tokenlab.engine.selfcheck import _child; _child({str(model_path)!r})"
    try:
        child = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
            errors="replace",
        )
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return DecodeCheck(False, f"the check hung for more than {timeout:.0f} s while "
                                  f"{_last_phase(stdout)}", time.monotonic() - start)
    seconds = time.monotonic() - start
    done = _last_value(child.stdout, "done")
    if child.returncode == 0 and done:
        return DecodeCheck(True, done, seconds)
    phase = _last_phase(child.stdout)
    if child.returncode < 0:
        try:
            name = signal.Signals(-child.returncode).name
        except ValueError:
            name = f"signal {-child.returncode}"
        meaning = _SIGNAL_MEANING.get(name, "a crash inside llama.cpp")
        return DecodeCheck(False, f"llama.cpp crashed with {name} ({meaning}) while {phase}", seconds, name)
    last_error = next((line.strip() for line in reversed(child.stderr.splitlines()) if line.strip()), "")
    return DecodeCheck(
        False, f"the check failed while {phase}: {last_error or f'exit status {child.returncode}'}", seconds
    )


def _last_value(stdout: str, key: str) -> str | None:
    for line in reversed(stdout.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and key in record:
            return str(record[key])
    return None


def _last_phase(stdout: str) -> str:
    return _last_value(stdout, "phase") or "starting Python"


def main(argv: list[str] | None = None) -> int:
    """Command line: check the default (or a given) model; one line out, exit 0 or 1."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tokenlab.engine.selfcheck", description=__doc__)
    parser.add_argument("--model", help="GGUF file to load (default: the default catalogue model)")
    parser.add_argument("--setup", action="store_true", help="phrase the result for scripts/setup")
    args = parser.parse_args(argv)
    if args.model:
        model = Path(args.model)
    else:
        from tokenlab.engine.models import DEFAULT_MODEL, catalogue_path

        model = catalogue_path(DEFAULT_MODEL)
    if not model.is_file():
        print(f"error: self-check: model file not found: {model} (run: tokenlab models pull)", file=sys.stderr)
        return 1
    result = run_decode_check(model)
    if result.ok:
        print(f"tokenlab: self-check passed in {result.seconds:.1f} s: {result.detail}", file=sys.stderr)
        return 0
    print(f"error: self-check failed: {result.detail}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
