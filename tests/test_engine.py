"""The llama.cpp engine on the real default model: prefix reuse, logits, UTF-8, chat template."""

from __future__ import annotations

import numpy as np
import pytest

from tokenlab.engine import Engine, EngineError, EngineOptions, Utf8Stream

PROMPT = "The capital of France is"


def test_loads_default_model(engine: Engine) -> None:
    assert engine.n_vocab == 49152
    assert engine.has_chat_template
    logits = engine.evaluate(engine.tokenize(PROMPT))
    assert logits.shape == (engine.n_vocab,)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
    assert engine.token_text(int(np.argmax(logits))) == " Paris"


def test_logits_are_a_copy(engine: Engine) -> None:
    first = engine.evaluate(engine.tokenize(PROMPT))
    kept = first.copy()
    engine.evaluate(engine.tokenize("Once upon a time"))
    np.testing.assert_array_equal(first, kept)


def test_prefix_reuse_decodes_only_the_new_suffix(fresh_engine: Engine) -> None:
    engine = fresh_engine
    prompt = engine.tokenize(PROMPT)
    engine.evaluate(prompt)
    assert engine.decoded_tokens == len(prompt)

    generated = []
    logits = engine.evaluate(prompt)  # fully cached: only the last token is decoded again
    assert engine.decoded_tokens == len(prompt) + 1
    for _ in range(5):
        token = int(np.argmax(logits))
        generated.append(token)
        logits = engine.append(token)
    assert engine.decoded_tokens == len(prompt) + 1 + 5

    # branch at generated step 2 with a different token: prompt + 2 tokens stay cached
    before = engine.decoded_tokens
    other = int(np.argsort(engine.evaluate(prompt + generated[:2]))[-2])
    assert engine.decoded_tokens == before + 1  # the last cached token, re-decoded for its logits
    engine.evaluate(prompt + generated[:2] + [other])
    assert engine.decoded_tokens == before + 2
    assert engine.tokens == prompt + generated[:2] + [other]


def test_reused_prefix_gives_the_same_logits_as_a_fresh_decode(engine: Engine, model_path) -> None:
    prompt = engine.tokenize(PROMPT)
    engine.evaluate(prompt + engine.tokenize(" Paris. The capital of Spain", add_bos=False))
    reused = engine.evaluate(prompt + engine.tokenize(" Paris. The capital of Italy", add_bos=False))
    fresh_engine = Engine(model_path, EngineOptions(n_ctx=256))
    try:
        fresh = fresh_engine.evaluate(prompt + engine.tokenize(" Paris. The capital of Italy", add_bos=False))
    finally:
        fresh_engine.close()
    assert int(np.argmax(reused)) == int(np.argmax(fresh))
    np.testing.assert_allclose(reused, fresh, atol=2e-2)


def test_utf8_stream_holds_split_characters() -> None:
    stream = Utf8Stream()
    llama = "🦙".encode()
    assert stream.push(b"a" + llama[:1]) == "a"
    assert stream.pending == llama[:1]
    assert stream.push(llama[1:3]) == ""
    assert stream.push(llama[3:] + b"!") == "🦙!"
    assert stream.flush() == ""
    broken = Utf8Stream()
    broken.push(llama[:2])
    assert broken.flush() == "\ufffd"


def test_emoji_tokens_end_mid_character(engine: Engine) -> None:
    ids = engine.tokenize("🦙", add_bos=False)
    assert len(ids) > 1, "the default model splits this emoji across byte tokens"
    pieces = [engine.piece(i) for i in ids]
    assert b"".join(pieces) == "🦙".encode()
    assert any(piece.decode("utf-8", errors="ignore") != piece.decode("utf-8", errors="replace") for piece in pieces)
    assert "\\x" in engine.token_text(ids[0])  # tables show the lone bytes escaped, never as U+FFFD


def test_chat_template_wraps_the_prompt(engine: Engine) -> None:
    chat = engine.format_prompt("Hello", chat=True)
    raw = engine.format_prompt("Hello", chat=False)
    chat_text = engine.detokenize(chat)
    assert "<|im_start|>user\nHello<|im_end|>" in chat_text
    assert chat_text.endswith("<|im_start|>assistant\n")
    assert engine.detokenize(raw) == "Hello"
    assert engine.format_prompt("Hello") == chat  # default for a model that ships a template


def test_prompt_longer_than_the_context_is_a_clear_error(model_path) -> None:
    small = Engine(model_path, EngineOptions(n_ctx=32))
    try:
        with pytest.raises(EngineError, match="do not fit the context of 32"):
            small.evaluate(small.tokenize("word " * 100))
    finally:
        small.close()


def test_not_a_gguf_is_a_clear_error(tmp_path) -> None:
    missing = tmp_path / "nothing.gguf"
    with pytest.raises(EngineError, match="model file not found"):
        Engine(missing)


def test_chat_template_renders_as_llama_cpp_python_does(engine: Engine) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    eos, bos = engine.token_text(engine.eos_id), engine.token_text(int(engine.llama.token_bos()))
    theirs = Jinja2ChatFormatter(template=engine.chat_template, eos_token=eos, bos_token=bos)(
        messages=[{"role": "user", "content": "Hello there"}]
    )
    assert engine.format_prompt("Hello there", chat=True) == engine.tokenize(theirs.prompt, add_bos=False)


@pytest.mark.parametrize(("template", "reason"), [
    ("{% if %}", "syntax error on line 1"),
    ("{{ foo.bar }}", "UndefinedError"),
    ("{{ ().__class__.__bases__ }}", "SecurityError"),
    ("{{ 'x' * 2000000000 }}", "too large"),
    ("{{ 10 ** 100000000 }}", "too large"),
    ("{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}", "output passed"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "ran longer than"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed"),
    ("{{ raise_exception('only system messages') }}", "it raised: only system messages"),
])
def test_hostile_chat_template_is_one_line_naming_it(engine: Engine, monkeypatch: pytest.MonkeyPatch,
                                                     template: str, reason: str) -> None:
    from tokenlab.engine.chat import ChatTemplateError

    monkeypatch.setattr(engine, "chat_template", template)
    with pytest.raises(ChatTemplateError) as info:
        engine.format_prompt("Hi", chat=True)
    message = str(info.value)
    assert "\n" not in message and "chat template" in message and "--raw" in message and reason in message
    assert engine.format_prompt("Hi", chat=False) == engine.tokenize("Hi")  # the way out works


def test_flash_attention_is_off_unless_asked_for(model_path) -> None:
    # off by default, as llama_cpp.Llama has it: with it a probability depends on the context size and
    # the batching (see EngineOptions.flash_attention); None leaves it to llama.cpp, which turns it on
    # on every CPU
    tokens = None
    rows = {}
    for setting in ("default", None, True, False):
        options = EngineOptions(n_ctx=128) if setting == "default" else EngineOptions(n_ctx=128, flash_attention=setting)
        loaded = Engine(model_path, options)
        try:
            tokens = tokens or loaded.tokenize(PROMPT)
            rows[setting] = loaded.evaluate(tokens)
        finally:
            loaded.close()
    np.testing.assert_array_equal(rows["default"], rows[False])
    np.testing.assert_array_equal(rows[None], rows[True])  # AUTO chose flash attention on this CPU
    assert not np.array_equal(rows[True], rows[False])  # the fused kernel rounds differently...
    # ...by about as much as the f16 KV cache itself does (KL ~3e-3 nats from an f32 cache either way)
    fused, unfused = (np.log(np.exp(row - row.max()) / np.exp(row - row.max()).sum())
                      for row in (rows[True].astype(np.float64), rows[False].astype(np.float64)))
    assert float((np.exp(fused) * (fused - unfused)).sum()) < 0.02
    assert int(np.argmax(rows[True])) == int(np.argmax(rows[False]))
