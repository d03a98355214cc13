"""Differential tests of the catalogue stages that need more than one llama.cpp call.

- DRY with llama.cpp's string sequence breakers, which llama.cpp expands over a real vocabulary:
  the default model's vocabulary (vocab_only, no weights) tokenizes them for llama.cpp and, through
  `dry_breaker_sequences`, for us.
- DRY on long repeats (the exponent clamp) and XTC where many tokens pass the threshold.
- Mirostat 2.0 over several steps: llama.cpp keeps mu inside its sampler and picks a token with its
  own generator; we feed that token to `next_state` and compare the next step's truncation, so a
  wrong mu update shows up as a different kept set.

The stage-by-stage comparisons of every llama.cpp stage live in test_sampling_llamacpp.py.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tokenlab.sampling import (
    DRY_DEFAULT_BREAKERS,
    MIROSTAT_MU,
    Pipeline,
    SamplerParams,
    dry_breaker_sequences,
)

llama_cpp = pytest.importorskip("llama_cpp")

from test_sampling_llamacpp import (
    PROB_ATOL,
    TOKEN_DATA,
    TokenArray,
    compare_stagewise,
    llama_sampler,
    ours_as_dict,
    random_logits,
    softmax_of,
)

MODEL_PATH = Path(__file__).resolve().parent.parent / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
# Multi-character breakers make llama.cpp build multi-token restart sequences (head + tail).
EXTRA_BREAKERS = ("\n\n", "User:", "###", "<|im_end|>", "  ")
# Mirostat compares -log2f(p) with mu in float32: tokens this close to mu may go either way.
SURPRISE_TOL = 1e-4


@pytest.fixture(scope="module")
def vocab() -> Iterator[Any]:
    """The default model's vocabulary (no weights are loaded)."""
    if not MODEL_PATH.is_file():
        pytest.skip(f"default model not found at {MODEL_PATH}")
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(MODEL_PATH).encode(), params)
    assert model, "llama.cpp could not load the vocabulary"
    try:
        yield llama_cpp.llama_model_get_vocab(model)
    finally:
        llama_cpp.llama_model_free(model)


def tokenize(vocab: Any, text: str) -> list[int]:
    """Ids of `text` as llama.cpp's DRY tokenizes breakers (no BOS, specials not parsed)."""
    data = text.encode("utf-8")
    buffer = (llama_cpp.llama_token * (len(data) + 8))()
    count = llama_cpp.llama_tokenize(vocab, data, len(data), buffer, len(buffer), False, False)
    assert count >= 0
    return list(buffer[:count])


def pieces(vocab: Any) -> list[bytes]:
    """Every token's text as llama.cpp's DRY sees it (detokenize with specials rendered)."""
    buffer = ctypes.create_string_buffer(512)
    token = (llama_cpp.llama_token * 1)()
    texts = []
    for token_id in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        token[0] = token_id
        size = llama_cpp.llama_detokenize(vocab, token, 1, buffer, len(buffer), False, True)
        assert size >= 0
        texts.append(buffer.raw[:size])
    return texts


def survivors_array(tokens: TokenArray) -> tuple[np.ndarray, np.ndarray]:
    """Ids and float32 logits of llama.cpp's array (all entries, -inf included)."""
    entries = np.ctypeslib.as_array(
        ctypes.cast(tokens.array.data, ctypes.POINTER(ctypes.c_uint8)),
        shape=(tokens.array.size * TOKEN_DATA.itemsize,),
    ).view(TOKEN_DATA)
    return entries["id"].astype(np.int64), entries["logit"].astype(np.float64)


def dry_history(rng: np.random.Generator, alphabet: list[int], length: int) -> list[int]:
    """A history with copied chunks (repeats) over `alphabet` (which holds breaker tokens)."""
    history = [int(rng.choice(alphabet)) for _ in range(4)]
    while len(history) < length:
        if rng.random() < 0.6:
            start = int(rng.integers(0, len(history) - 1))
            history.extend(history[start : start + int(rng.integers(2, 12))])
        else:
            history.append(int(rng.choice(alphabet)))
    return history[:length]


def run_llama_dry(
    vocab: Any, logits: np.ndarray, history: list[int], params: SamplerParams, breakers: list[str]
) -> np.ndarray:
    """llama.cpp's DRY output logits by id, with string breakers expanded over `vocab`."""
    encoded = [text.encode("utf-8") for text in breakers]
    array = (ctypes.c_char_p * max(1, len(encoded)))(*encoded)
    with llama_sampler(
        llama_cpp.llama_sampler_init_dry,
        vocab,
        params.dry_multiplier,
        params.dry_base,
        params.dry_allowed_length,
        params.dry_penalty_last_n,
        array,
        len(encoded),
    ) as sampler:
        for token in history:
            llama_cpp.llama_sampler_accept(sampler, token)
        tokens = TokenArray(logits)
        tokens.apply(sampler)
    ids, values = survivors_array(tokens)
    out = np.empty(logits.shape[0])
    out[ids] = values
    return out


def test_breaker_sequences_follow_llama_cpp_on_a_real_vocabulary(vocab: Any) -> None:
    texts = pieces(vocab)
    sequences = dry_breaker_sequences(
        [*DRY_DEFAULT_BREAKERS, *EXTRA_BREAKERS], lambda text: tokenize(vocab, text), texts
    )
    singles = {seq[0] for seq in sequences if len(seq) == 1}
    newline = tokenize(vocab, "\n")
    assert len(newline) == 1 and newline[0] in singles
    # every token containing a breaker is a one-token breaker, e.g. ".\n" and "\n\n"
    assert {i for i, text in enumerate(texts) if b"\n" in text} <= singles
    multi = [seq for seq in sequences if len(seq) > 1]
    assert multi, "multi-character breakers must give head + tail sequences"
    for head, *tail in multi:
        assert tail and len(tail) <= 20
        # the head ends with a proper prefix of a multi-character breaker; the tail spells the rest
        assert any(
            texts[head].endswith(text.encode()[:cut])
            and text.encode()[cut:].startswith(b"".join(texts[t] for t in tail)[:1])
            for text in EXTRA_BREAKERS
            for cut in range(1, len(text.encode()))
        )


def test_dry_with_string_breakers_matches_llama_cpp(vocab: Any) -> None:
    breakers = [*DRY_DEFAULT_BREAKERS, *EXTRA_BREAKERS]
    sequences = dry_breaker_sequences(breakers, lambda text: tokenize(vocab, text), pieces(vocab))
    n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
    rng = np.random.default_rng(31)
    multi = [seq for seq in sequences if len(seq) > 1]
    singles = [seq[0] for seq in sequences if len(seq) == 1]
    penalized_trials = limited_trials = 0
    for _ in range(40):
        ordinary = [int(t) for t in rng.integers(1000, n_vocab, 6)]
        alphabet = ordinary + [int(rng.choice(singles))]
        history = dry_history(rng, alphabet, int(rng.integers(5, 120)))
        # splice in complete multi-token breakers so restart sequences occur
        for _ in range(int(rng.integers(0, 3))):
            chosen = multi[int(rng.integers(0, len(multi)))]
            at = int(rng.integers(0, len(history) + 1))
            history[at:at] = list(chosen)
        params = SamplerParams(
            samplers=("dry",),
            dry_multiplier=float(rng.uniform(0.2, 2.0)),
            dry_base=float(rng.uniform(1.0, 2.5)),
            dry_allowed_length=int(rng.integers(1, 4)),
            dry_penalty_last_n=int(rng.choice([8, 32, 200])),
            dry_sequence_breakers=sequences,
        )
        logits = rng.normal(0.0, 3.0, n_vocab).astype(np.float32)
        theirs = run_llama_dry(vocab, logits, history, params, breakers)
        result = Pipeline(params).run(logits, history)
        ours = result.stages[0].logits if result.stages else logits.astype(np.float64)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
        if result.stages and result.stages[0].params["penalized"]:
            penalized_trials += 1
        unlimited = Pipeline(params.replace(dry_sequence_breakers=())).run(logits, history)
        if [r.params for r in unlimited.stages] != [r.params for r in result.stages]:
            limited_trials += 1  # the breakers changed what was penalized
    assert penalized_trials >= 15 and limited_trials >= 5, (penalized_trials, limited_trials)


def test_dry_long_repeats_hit_llama_cpps_exponent_clamp() -> None:
    rng = np.random.default_rng(5)
    for base in (60.0, 1.5, 1.000001, 1.0000005):
        for _ in range(6):
            n_vocab = 40
            chunk = [int(t) for t in rng.integers(0, n_vocab, 30)]
            history = chunk + chunk + chunk[: int(rng.integers(1, 29))]
            # base 60 clamps the exponent at 21: scale the multiplier so float32 stays finite
            multiplier = float(rng.uniform(0.5, 1.5)) * (1e-30 if base == 60.0 else 1.0)
            params = SamplerParams(
                samplers=("dry",),
                dry_multiplier=multiplier,
                dry_base=base,
                dry_allowed_length=2,
                dry_penalty_last_n=len(history),
            )
            logits = random_logits(rng, n_vocab)
            assert compare_stagewise(logits, history, params) == "same"
            report = Pipeline(params).run(logits, history).stages[0]
            assert report.params["longest_repeat"] > 2 + 21  # past base 60's clamp of 21


def test_xtc_where_many_tokens_pass_the_threshold() -> None:
    rng = np.random.default_rng(8)
    outcomes = []
    removed = 0
    for trial in range(120):
        n_vocab = int([3, 6, 12, 40, 300][trial % 5])
        logits = (rng.normal(size=n_vocab) * rng.uniform(0.2, 1.0)).astype(np.float32)
        probs = sorted(softmax_of({i: float(v) for i, v in enumerate(logits)}).values())
        threshold = float(probs[-int(rng.integers(1, min(6, n_vocab) + 1))]) * rng.uniform(0.8, 1.0)
        params = SamplerParams(
            samplers=("xtc",),
            xtc_probability=1.0,
            xtc_threshold=min(threshold, 0.5),
            min_keep=int(rng.integers(1, 4)),
        )
        outcomes.append(compare_stagewise(logits, [], params))
        report = Pipeline(params).run(logits).stages[0]
        removed += report.params["removed"] > 0
    assert outcomes.count("rounding") <= 3 and removed >= 60


def test_xtc_probability_zero_is_off_in_both() -> None:
    params = SamplerParams(samplers=("xtc",), xtc_probability=0.0, xtc_threshold=0.05)
    assert Pipeline(params).stages == ()
    logits = random_logits(np.random.default_rng(1), 50)
    assert compare_stagewise(logits, [], params) == "same"


def test_mirostat_v2_trajectory_matches_llama_cpp() -> None:
    """Several steps: llama.cpp's kept set each step, our mu updated with llama.cpp's choices."""
    rng = np.random.default_rng(77)
    compared = 0
    for trial in range(24):
        n_vocab = int([300, 1500, 5000][trial % 3])
        tau = float(rng.uniform(1.0, 9.0))
        eta = float(rng.uniform(0.05, 1.0))
        params = SamplerParams(
            samplers=("mirostat_v2",), mirostat=2, mirostat_tau=tau, mirostat_eta=eta
        )
        pipeline = Pipeline(params)
        state = None
        with llama_sampler(
            llama_cpp.llama_sampler_init_mirostat_v2, 4321 + trial, tau, eta
        ) as sampler:
            for _ in range(8):
                logits = random_logits(rng, n_vocab)
                tokens = TokenArray(logits)
                tokens.apply(sampler)
                theirs = tokens.survivors()
                ids, _ = survivors_array(tokens)
                chosen = int(ids[tokens.array.selected])
                result = pipeline.run(logits, rng=np.random.default_rng(0), state=state)
                report = result.stages[0]
                mu = report.params["mu"]
                assert isinstance(mu, float)
                if state is None:
                    assert mu == pytest.approx(2 * tau)
                ours = ours_as_dict(report)
                if ours.keys() != theirs.keys():
                    surprises = {
                        t: -math.log2(p)
                        for t, p in softmax_of({i: float(v) for i, v in enumerate(logits)}).items()
                    }
                    assert all(
                        abs(surprises[t] - mu) < SURPRISE_TOL for t in ours.keys() ^ theirs.keys()
                    )
                    break  # a float32 boundary case: the trajectories legitimately part here
                expected = softmax_of(theirs)
                for token, prob in ours.items():
                    assert prob == pytest.approx(expected[token], abs=PROB_ATOL)
                compared += 1
                state = result.next_state(chosen)
                surprise = -math.log2(result.prob_of(chosen))
                assert state[MIROSTAT_MU] == pytest.approx(mu - eta * (surprise - tau), rel=1e-12)
    assert compared >= 170
