"""The remote engine against a real OpenAI-compatible server: llama-cpp-python's own, on the default model.

The server runs in a subprocess on a loopback port, started once for the module and killed at teardown.
Misbehaving servers (down, slow, answering garbage) are small stdlib HTTP servers in a thread.
"""

from __future__ import annotations

import http.server
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tokenlab.cli import app
from tokenlab.engine import Engine
from tokenlab.engine.remote import (
    RemoteEngine,
    RemoteError,
    RemoteOptions,
    base_url,
    parse_completion_logprobs,
)
from tokenlab.lab import Generation
from tokenlab.sampling import SamplerParams, raw_stats, truncated_raw_stats

PROMPT = "The capital of France is"
SERVER_START_TIMEOUT = 180.0


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(model_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """llama-cpp-python's OpenAI-compatible server on the default model; returns (process, URL) once it answers."""
    port = free_port()
    # a file, not a pipe: nobody reads the server's log while it runs, and a full pipe would block it
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed when the server is stopped
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "512", "--n_threads", "1", "--verbose", "false"],
        stdout=log, stderr=log,
    )
    process.log = log  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            error = log.read().decode(errors="replace")[-2000:]
            log.close()
            raise RuntimeError(f"llama_cpp.server exited with {process.returncode}: {error}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.5)
    stop_server(process)
    raise RuntimeError(f"llama_cpp.server did not answer within {SERVER_START_TIMEOUT:.0f} s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """Kill the server process and reap it."""
    process.kill()
    try:
        process.wait(timeout=30)
    finally:
        process.log.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def server(model_path: Path) -> Iterator[str]:
    """The URL of a llama_cpp.server on the default model, shared by the module."""
    process, url = start_server(model_path)
    yield url
    stop_server(process)


@pytest.fixture(scope="module")
def remote(server: str) -> RemoteEngine:
    """A remote engine on the module's server."""
    return RemoteEngine(server, RemoteOptions(timeout=60))


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run tokenlab in-process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


# -- against the real server ------------------------------------------------------------------------------


def test_the_server_is_recognised_and_tokenizes_like_the_local_engine(remote: RemoteEngine, engine: Engine) -> None:
    assert remote.flavour == "llama-cpp-python"
    assert remote.tokenize(PROMPT) == engine.tokenize(PROMPT)
    assert remote.tokenize(" Paris", add_bos=False) == engine.tokenize(" Paris", add_bos=False)
    paris = engine.find_token(" Paris")
    assert remote.find_token(" Paris") == paris
    assert remote.piece(paris) == engine.piece(paris)
    # the end tokens of the model's vocabulary are found through the server's tokenizer
    assert remote.is_eog(engine.eos_id) and not remote.is_eog(paris)
    assert "server top 20 + rest" in remote.name


def test_greedy_generation_through_engine_equals_local_greedy_generation(server: str, engine: Engine) -> None:
    # llama_cpp.server takes the context as text and tokenizes it again, so the comparison needs a greedy
    # continuation whose every prefix is its own canonical tokenization (no two newline tokens where the
    # tokenizer would use one): this one is, and the test checks it below
    prompt = "Once upon a time"
    common = ("generate", prompt, "--raw", "--temperature", "0", "-n", "24", "--format", "jsonl", "--seed", "3")
    code, local_out, local_err = run_cli(*common)
    assert code == 0, local_err
    code, remote_out, remote_err = run_cli(*common, "--engine", server)
    assert code == 0, remote_err
    local_lines = [json.loads(line) for line in local_out.splitlines()]
    remote_lines = [json.loads(line) for line in remote_out.splitlines()]
    local_ids = [line["id"] for line in local_lines if "id" in line]
    remote_ids = [line["id"] for line in remote_lines if "id" in line]
    assert len(local_ids) == 24
    full = engine.tokenize(prompt) + local_ids
    assert all(engine.tokenize(engine.detokenize(full[:end])) == full[:end] for end in range(len(full) - 23, len(full)))
    assert remote_ids == local_ids
    assert remote_lines[-1]["text"] == local_lines[-1]["text"]
    # every step says what its distribution covered
    assert remote_lines[-1]["distribution"] == {"source": "server", "url": server, "top_k": 20}
    assert "distribution" not in local_lines[-1]
    for line in remote_lines[:-1]:
        assert 0.0 <= line["rest_mass"] < 1.0
        assert len(line["top"]) <= 20
        assert all(candidate["prob"] > 0 for candidate in line["top"])


def test_inspect_top_candidates_match_the_local_engine(server: str) -> None:
    common = ("inspect", PROMPT, "--raw", "--format", "json", "--top-n", "20")
    code, local_out, local_err = run_cli(*common)
    assert code == 0, local_err
    code, remote_out, remote_err = run_cli(*common, "--engine", server)
    assert code == 0, remote_err
    local, remote = json.loads(local_out), json.loads(remote_out)
    local_probs = {c["id"]: c["prob"] for c in local["candidates"]}
    remote_probs = {c["id"]: c["prob"] for c in remote["candidates"]}
    assert [c["id"] for c in remote["candidates"][:5]] == [c["id"] for c in local["candidates"][:5]]
    assert len(remote_probs) == 20
    for token_id, prob in remote_probs.items():
        # the server's log-probabilities are float32: equal to the local softmax to float32 precision
        assert prob == pytest.approx(local_probs[token_id], rel=1e-4, abs=1e-7), token_id
    rest = remote["distribution"]["rest_mass"]
    assert rest == pytest.approx(1.0 - sum(local_probs[t] for t in remote_probs), abs=1e-5)
    # the rest counted as one outcome: a lower bound of the whole vocabulary's entropy
    assert remote["entropy"] <= local["entropy"] + 1e-9
    # the pipeline draws among the server's K, renormalised
    finals = [c["final_prob"] for c in remote["candidates"]]
    assert sum(finals) == pytest.approx(1.0, abs=1e-6)


def test_the_sampler_runs_on_the_server_distribution_with_every_knob(remote: RemoteEngine, engine: Engine) -> None:
    # end-of-generation tokens banned: llama_cpp.server never lists them among its top log-probabilities
    eog = tuple(token for token in range(engine.n_vocab) if engine.is_eog(token))
    params = SamplerParams(temperature=0.8, top_k=5, min_p=0.02, presence_penalty=0.5, ban=eog)
    tokens = remote.tokenize(PROMPT)
    generation = Generation(remote, tokens, params, seed=11, max_tokens=4)
    steps = list(generation.run())
    assert len(steps) == 4
    for step in steps:
        assert step.rest_mass is not None
        survivors = [c for c in step.top if c.removed_by is None]
        assert 1 <= len(survivors) <= 5
        assert step.id in {c.id for c in survivors}
    # the same knobs on the local engine's full row draw the same tokens: the tail the server leaves out
    # is never reached by top-k 5 (and these stages do not care that the row holds log-probabilities)
    assert eog and all(step.id not in eog for step in steps)
    local = Generation(engine, engine.tokenize(PROMPT), params, seed=11, max_tokens=4)
    assert [step.id for step in local.run()] == [step.id for step in steps]


def test_rollouts_and_score_run_step_by_step_through_the_server(server: str, engine: Engine) -> None:
    code, out, err = run_cli("rollouts", PROMPT, "--raw", "-n", "4", "--length", "2", "--seed", "1",
                             "--format", "jsonl", "--engine", server)
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["distribution"]["top_k"] == 20
    assert summary["n"] == 4
    assert "completion requests" in err

    text_file = Path(os.environ["TOKENLAB_DATA"]) / "score-remote.txt"
    text_file.write_text("The lighthouse keeper climbed the stairs.", encoding="utf-8")
    code, local_out, err = run_cli("score", str(text_file), "--format", "jsonl")
    assert code == 0, err
    code, remote_out, err = run_cli("score", str(text_file), "--format", "jsonl", "--engine", server)
    assert code == 0, err
    local_tokens = [json.loads(line) for line in local_out.splitlines()[:-1]]
    remote_tokens = [json.loads(line) for line in remote_out.splitlines()[:-1]]
    assert [t["id"] for t in remote_tokens] == [t["id"] for t in local_tokens]
    known = [(r, t) for r, t in zip(remote_tokens, local_tokens) if r["prob"] is not None]
    assert known, "no token of the text was in the server's top 20"
    for remote_token, local_token in known:
        # the local score decodes many positions per batch, the server one at a time: llama.cpp's kernels
        # round the two differently (see test_score.py), so this is looser than the inspect comparison
        assert remote_token["prob"] == pytest.approx(local_token["prob"], abs=2e-2)
        assert abs(remote_token["rank"] - local_token["rank"]) <= 1
    outside = sum(1 for r in remote_tokens[1:] if r["prob"] is None)
    remote_summary = json.loads(remote_out.splitlines()[-1])
    assert remote_summary.get("outside_top_k", 0) == outside
    assert remote_summary["distribution"]["source"] == "server"


def test_a_killed_server_gives_one_line_and_the_generation_keeps_its_steps(model_path: Path) -> None:
    process, url = start_server(model_path)
    try:
        remote = RemoteEngine(url, RemoteOptions(timeout=30, retries=1))
        generation = Generation(remote, remote.tokenize(PROMPT), SamplerParams(temperature=0), max_tokens=8)
        kept = [generation.step() for _ in range(3)]
    finally:
        stop_server(process)
    with pytest.raises(RemoteError) as failure:
        generation.step()
    message = str(failure.value)
    assert "\n" not in message and url in message and "is it running" in message
    assert generation.steps == kept  # the lab keeps what it has

    code, out, err = run_cli("generate", PROMPT, "--raw", "-n", "2", "--engine", url)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the server") and "Traceback" not in err


# -- recorded and misbehaving servers --------------------------------------------------------------------

# The shape vLLM documents for /v1/completions with "logprobs": K (CompletionLogProbs: text_offset,
# token_logprobs, tokens, top_logprobs), with "return_tokens_as_token_ids": true naming tokens "token_id:N".
VLLM_RESPONSE = {
    "id": "cmpl-5b1f0e0c8a8e4a6f9d1d2c3b4a5f6e7d",
    "object": "text_completion",
    "created": 1732800000,
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "choices": [{
        "index": 0,
        "text": " Paris",
        "logprobs": {
            "text_offset": [24],
            "token_logprobs": [-0.1053],
            "tokens": ["token_id:12366"],
            "top_logprobs": [{"token_id:12366": -0.1053, "token_id:264": -2.7311, "token_id:279": -4.0125}],
        },
        "finish_reason": "length",
        "stop_reason": None,
        "prompt_logprobs": None,
    }],
    "usage": {"prompt_tokens": 7, "total_tokens": 8, "completion_tokens": 1, "prompt_tokens_details": None},
}

# llama-server's /v1/completions with n_probs and post_sampling_probs: false
LLAMA_SERVER_RESPONSE = {
    "choices": [{
        "text": " Paris", "index": 0, "finish_reason": "length",
        "logprobs": {"content": [{
            "id": 12366, "token": " Paris", "bytes": [32, 80, 97, 114, 105, 115], "logprob": -0.1053,
            "top_logprobs": [
                {"id": 12366, "token": " Paris", "bytes": [32, 80, 97, 114, 105, 115], "logprob": -0.1053},
                {"id": 9468, "token": "", "bytes": [240, 159], "logprob": -5.5},
            ],
        }]},
    }],
    "object": "text_completion", "model": "llama",
}


def test_a_recorded_vllm_response_parses() -> None:
    candidates = parse_completion_logprobs(VLLM_RESPONSE)
    assert [(c.id, c.logprob) for c in candidates] == [(12366, -0.1053), (264, -2.7311), (279, -4.0125)]
    # without return_tokens_as_token_ids vLLM names tokens by their text; tokenlab maps those back itself
    by_text = json.loads(json.dumps(VLLM_RESPONSE).replace("token_id:12366", " Paris"))
    assert parse_completion_logprobs(by_text)[0].id is None
    assert parse_completion_logprobs(by_text)[0].text == " Paris"


def test_a_llama_server_response_parses_with_ids_and_bytes() -> None:
    candidates = parse_completion_logprobs(LLAMA_SERVER_RESPONSE)
    assert [(c.id, c.piece) for c in candidates] == [(12366, b" Paris"), (9468, b"\xf0\x9f")]


@pytest.mark.parametrize("payload", [
    [], {"choices": []}, {"choices": [{"text": "x"}]}, {"choices": [{"logprobs": {"top_logprobs": []}}]},
    {"choices": [{"logprobs": {"top_logprobs": [{"a": "high"}]}}]},
    {"choices": [{"logprobs": {"top_logprobs": [{"a": 0.7}]}}]},
    {"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": "a", "logprob": -1}]}]}}]},
])
def test_garbage_completion_answers_are_refused(payload: object) -> None:
    with pytest.raises(ValueError):
        parse_completion_logprobs(payload)


def test_truncated_stats_keep_the_server_probabilities_and_bound_the_entropy() -> None:
    full = np.log(np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.05]))
    row = np.full(6, -np.inf)
    row[:3] = full[:3]
    stats = truncated_raw_stats(row, 0.2)
    np.testing.assert_allclose(stats.probs(np.arange(3)), [0.5, 0.2, 0.1])
    assert stats.logprob(1) == pytest.approx(math.log(0.2))
    expected = -(0.5 * math.log2(0.5) + 0.2 * math.log2(0.2) + 0.1 * math.log2(0.1) + 0.2 * math.log2(0.2))
    assert stats.entropy_bits == pytest.approx(expected)
    assert stats.entropy_bits < raw_stats(full).entropy_bits
    assert raw_stats(row).probs(np.arange(1))[0] == pytest.approx(0.5 / 0.8)  # what a plain row would claim


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    mode = "garbage"

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.mode == "slow":
            time.sleep(3)
        body = b"<html>not an API</html>" if self.mode == "garbage" else b"{}"
        try:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up waiting

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def misbehaving() -> Iterator[tuple[str, type[_Misbehaving]]]:
    handler = type("Handler", (_Misbehaving,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def test_a_server_answering_garbage_or_too_slowly_gives_one_line(misbehaving: tuple[str, type[_Misbehaving]]) -> None:
    url, handler = misbehaving
    with pytest.raises(RemoteError, match="not JSON") as failure:
        RemoteEngine(url, RemoteOptions(timeout=5, retries=0))
    assert "\n" not in str(failure.value)
    handler.mode = "empty"
    with pytest.raises(RemoteError, match="unexpected shape"):
        RemoteEngine(url, RemoteOptions(timeout=5, retries=0))
    handler.mode = "slow"
    with pytest.raises(RemoteError, match="did not answer /v1/models within 0.5 s"):
        RemoteEngine(url, RemoteOptions(timeout=0.5, retries=1))
    code, _, err = run_cli("inspect", PROMPT, "--engine", url, "--engine-timeout", "0.5")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "did not answer" in err


def test_bad_engine_flags_are_one_line_errors() -> None:
    code, _, err = run_cli("generate", "Hi", "--engine", "gpu-box:8080")
    assert code == 2 and "expected the server's URL" in err
    code, _, err = run_cli("generate", "Hi", "--engine", "http://127.0.0.1:9", "--logprobs", "0")
    assert code == 2 and "--logprobs must be in 1..1000" in err
    assert base_url("http://gpu-box:8080/v1/") == "http://gpu-box:8080"
