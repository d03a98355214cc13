"""tokenlab benchmarks: generation speed against llama-cpp-python, and the pipeline on a 262,144-token row.

Figures are measured side by side in one run (interleaved repetitions), so compare the ratios, not
the absolute times: the machines this runs on are shared and noisy.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import numpy as np

PROMPT = "Write a long story about a lighthouse keeper who finds a strange map."


def bench_generate(model: str | None, tokens: int, reps: int, threads: int | None) -> None:
    """tokens/s of tokenlab's generate loop against llama-cpp-python's create_completion, same knobs."""
    import llama_cpp

    from tokenlab.engine import Engine, EngineOptions
    from tokenlab.engine.models import resolve_model
    from tokenlab.lab import Generation
    from tokenlab.sampling import SamplerParams

    path = resolve_model(model)
    options = EngineOptions(n_ctx=1024, n_threads=threads)
    engine = Engine(path, options)
    reference = llama_cpp.Llama(
        model_path=str(path), n_ctx=1024, n_threads=engine.n_threads, n_threads_batch=engine.n_threads,
        logits_all=False, verbose=False,
    )
    prompt = engine.format_prompt(PROMPT, chat=True)
    prompt_text = engine.detokenize(prompt)
    # the same default knobs on both sides (llama.cpp's common sampler defaults); both time the prompt
    # decode too, and the rate is per generated token
    params = SamplerParams()

    def run_ours(seed: int) -> tuple[int, float]:
        engine.reset()
        generation = Generation(engine, prompt, params, seed=seed, max_tokens=tokens)
        sink = io.StringIO()
        started = time.perf_counter()
        for step in generation.run():
            sink.write(step.text)
        return len(generation.steps), time.perf_counter() - started

    def run_theirs(seed: int) -> tuple[int, float]:
        reference.reset()
        started = time.perf_counter()
        out = reference.create_completion(
            prompt_text, max_tokens=tokens, temperature=0.8, top_k=40, top_p=0.95, min_p=0.05,
            typical_p=1.0, repeat_penalty=1.0, seed=seed,
        )
        return int(out["usage"]["completion_tokens"]), time.perf_counter() - started

    run_ours(0), run_theirs(0)  # warm up both (page in the weights, build caches)
    ours_rates, theirs_rates = [], []
    for rep in range(reps):
        for runner, rates in ((run_ours, ours_rates), (run_theirs, theirs_rates)):
            count, seconds = runner(rep + 1)
            rates.append(count / seconds)
    ours, theirs = statistics.median(ours_rates), statistics.median(theirs_rates)
    print(f"\n== generate: {engine.name}, {engine.n_threads} threads, prompt {len(prompt)} tokens, "
          f"up to {tokens} tokens, {reps} interleaved reps (median)")
    print(f"  tokenlab Generation loop        {ours:8.1f} tok/s   {fmt(ours_rates)}")
    print(f"  llama-cpp-python completion     {theirs:8.1f} tok/s   {fmt(theirs_rates)}")
    print(f"  ratio tokenlab / llama-cpp      {ours / theirs:8.3f}   (target >= 1.0)")
    reference.close()
    engine.close()


def bench_tui(model: str | None, tokens: int, reps: int, threads: int | None) -> None:
    """tokens/s of the lab TUI (headless run_test app) against the same generation loop without a UI."""
    import asyncio

    from tokenlab.engine import Engine, EngineOptions
    from tokenlab.engine.models import resolve_model
    from tokenlab.lab import Generation
    from tokenlab.lab.controller import LabSettings
    from tokenlab.sampling import SamplerParams
    from tokenlab.tui.app import TokenLabApp

    engine = Engine(resolve_model(model), EngineOptions(n_ctx=1024, n_threads=threads))
    params = SamplerParams(ban=(engine.eos_id,))  # every run generates exactly `tokens` tokens
    prompt = engine.format_prompt(PROMPT, chat=True)

    def run_plain(seed: int) -> float:
        engine.reset()
        generation = Generation(engine, prompt, params, seed=seed, max_tokens=tokens)
        for _ in generation.run():
            pass
        return generation.wall_tokens_per_second

    async def run_tui_async(seed: int) -> float:
        engine.reset()
        settings = LabSettings(prompt=PROMPT, chat=True, params=params, seed=seed, max_tokens=tokens)
        app = TokenLabApp(engine, settings)
        async with app.run_test(size=(100, 30)) as pilot:
            while True:
                generation = app.controller.generation
                if generation is not None and generation.done and app.lab.stop_reason is not None:
                    break
                await pilot.pause(0.02)
            rate = generation.wall_tokens_per_second
            shown = len(app.lab.steps)
        assert shown == tokens, f"the screen shows {shown} of {tokens} tokens"
        return rate

    def run_tui(seed: int) -> float:
        return asyncio.run(run_tui_async(seed))

    run_plain(0), run_tui(0)
    plain_rates, tui_rates = [], []
    for rep in range(reps):
        plain_rates.append(run_plain(rep + 1))
        tui_rates.append(run_tui(rep + 1))
    plain, tui = statistics.median(plain_rates), statistics.median(tui_rates)
    print(f"\n== lab TUI: {engine.name}, {tokens} tokens per run, {reps} interleaved reps (median, wall clock)")
    print(f"  generation loop, no UI          {plain:8.1f} tok/s   {fmt(plain_rates)}")
    print(f"  lab TUI (headless run_test)     {tui:8.1f} tok/s   {fmt(tui_rates)}")
    print(f"  ratio TUI / no UI               {tui / plain:8.3f}   (target >= 0.9)")
    engine.close()


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in values) + "]"


def bench_pipeline(n_vocab: int, iterations: int) -> None:
    """Per-step time of the sampler pipeline and of a full step record on a large vocabulary row."""
    from tokenlab.lab.step import Frontier
    from tokenlab.sampling import Pipeline, SamplerParams, raw_stats

    rng = np.random.default_rng(0)
    # logits shaped like a real model's: a heavy head over a long flat tail
    logits = (rng.standard_normal(n_vocab) * 2.0).astype(np.float32)
    logits[rng.choice(n_vocab, 50, replace=False)] += rng.uniform(4, 10, 50).astype(np.float32)
    history = tuple(int(t) for t in rng.integers(0, n_vocab, 64))
    cases = {
        "default chain (llama.cpp order)": SamplerParams(),
        "default + penalties + bias + ban": SamplerParams(
            repeat_penalty=1.1, frequency_penalty=0.1, presence_penalty=0.1,
            logit_bias={5: 2.0, 7: -1.0}, ban=(11, 13),
        ),
        "greedy": SamplerParams(temperature=0),
        "top_k off (full sort for top_p)": SamplerParams(top_k=0),
        "all filters off (T=0.8)": SamplerParams(top_k=0, top_p=1.0, min_p=0.0),
    }
    print(f"\n== pipeline on a {n_vocab:,}-token float32 row, {iterations} iterations (median, ms/step)")
    draw_rng = np.random.default_rng(1)
    for label, params in cases.items():
        pipeline = Pipeline(params)
        times = []
        for _ in range(iterations):
            started = time.perf_counter()
            pipeline.run(logits, history).draw(draw_rng)
            times.append(time.perf_counter() - started)
        print(f"  {label:40s} {statistics.median(times) * 1e3:7.3f} ms   (p90 {np.percentile(times, 90) * 1e3:.3f})")
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        raw_stats(logits)
        times.append(time.perf_counter() - started)
    print(f"  {'raw_stats (softmax norm, entropy)':40s} {statistics.median(times) * 1e3:7.3f} ms")
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        frontier = Frontier(logits=logits, history=history, params=SamplerParams())
        frontier.candidates(str, 20)
        times.append(time.perf_counter() - started)
    print(f"  {'whole step record (pipeline+raw+top20)':40s} {statistics.median(times) * 1e3:7.3f} ms   (target pipeline <= 1 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="catalogue name or .gguf path (default: smollm2-135m)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per generation run")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per side")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--vocab", type=int, default=262_144, help="row length for the pipeline benchmark")
    parser.add_argument("--iterations", type=int, default=300, help="pipeline iterations")
    parser.add_argument("--only", choices=["generate", "pipeline", "tui"], default=None, help="run one benchmark")
    args = parser.parse_args()
    if args.only in (None, "pipeline"):
        bench_pipeline(args.vocab, args.iterations)
    if args.only in (None, "generate"):
        bench_generate(args.model, args.tokens, args.reps, args.threads)
    if args.only in (None, "tui"):
        bench_tui(args.model, args.tokens, args.reps, args.threads)


if __name__ == "__main__":
    main()
