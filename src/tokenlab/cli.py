"""The `tokenlab` command line: generate, inspect, models, and a demo when run with no command."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import secrets
import sys
import time
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any, Optional

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from tokenlab import __version__
from tokenlab.render import mode_legend
from tokenlab.sampling import SamplerParams

EXIT_BAD_INPUT = 2

app = typer.Typer(
    name="tokenlab",
    help="A terminal sampling lab: watch a local language model pick its next token.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

err_console = Console(stderr=True, highlight=False)


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr with exit code 2."""


class OutputFormat(str, Enum):
    """How generate and score print their result."""

    text = "text"
    jsonl = "jsonl"


class InspectFormat(str, Enum):
    """How inspect prints its result."""

    table = "table"
    json = "json"


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line on stderr and exit code 2 (130 on Ctrl-C)."""
    from rich.markup import escape

    from tokenlab.engine import EngineError
    from tokenlab.engine.models import ModelError
    from tokenlab.engine.text import terminal_safe

    try:
        yield
    except (UserError, EngineError, ModelError, ValueError) as exc:
        # the message may quote a file name, a token or model metadata: never markup, never terminal commands
        err_console.print(f"[bold red]error:[/] {escape(terminal_safe(str(exc)))}", markup=True, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        # the reader went away (e.g. `| head`); nothing more to say
        sys.stderr.close()
        raise typer.Exit(0) from None
    except OSError as exc:
        err_console.print(f"[bold red]error:[/] {escape(terminal_safe(describe_os_error(exc)))}", markup=True,
                          soft_wrap=True)
        silence_stdout()
        raise typer.Exit(1) from None


def describe_os_error(exc: OSError) -> str:
    """One line for a failed read or write (standard output named as such)."""
    what = str(exc.filename) if exc.filename else "cannot write to standard output"
    return f"{what}: {exc.strerror or exc}"


def silence_stdout() -> None:
    """Point standard output at /dev/null, so the flush at exit cannot fail again with a traceback."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


# -- shared options -------------------------------------------------------------------------------


_SAMPLER_DEFAULTS = SamplerParams()


@dataclass
class RunOptions:
    """The model, prompt-format and sampler flags shared by generate, inspect and the lab."""

    model: str | None = None
    chat: bool | None = None
    seed: int | None = None
    max_tokens: int = 128
    temperature: float = _SAMPLER_DEFAULTS.temperature
    top_k: int = _SAMPLER_DEFAULTS.top_k
    top_p: float = _SAMPLER_DEFAULTS.top_p
    min_p: float = _SAMPLER_DEFAULTS.min_p
    typical_p: float = _SAMPLER_DEFAULTS.typical_p
    repeat_penalty: float = _SAMPLER_DEFAULTS.repeat_penalty
    frequency_penalty: float = _SAMPLER_DEFAULTS.frequency_penalty
    presence_penalty: float = _SAMPLER_DEFAULTS.presence_penalty
    penalty_last_n: int = _SAMPLER_DEFAULTS.penalty_last_n
    min_keep: int = _SAMPLER_DEFAULTS.min_keep
    top_n_sigma: float = _SAMPLER_DEFAULTS.top_n_sigma
    xtc_threshold: float = _SAMPLER_DEFAULTS.xtc_threshold
    xtc_probability: float = _SAMPLER_DEFAULTS.xtc_probability
    dry_multiplier: float = _SAMPLER_DEFAULTS.dry_multiplier
    dry_base: float = _SAMPLER_DEFAULTS.dry_base
    dry_allowed_length: int = _SAMPLER_DEFAULTS.dry_allowed_length
    dry_penalty_last_n: int = _SAMPLER_DEFAULTS.dry_penalty_last_n
    dry_sequence_breaker: list[str] = field(default_factory=list)
    mirostat: int = _SAMPLER_DEFAULTS.mirostat
    mirostat_tau: float = _SAMPLER_DEFAULTS.mirostat_tau
    mirostat_eta: float = _SAMPLER_DEFAULTS.mirostat_eta
    dynatemp_range: float = _SAMPLER_DEFAULTS.dynatemp_range
    dynatemp_exponent: float = _SAMPLER_DEFAULTS.dynatemp_exponent
    temperature_end: float | None = _SAMPLER_DEFAULTS.temperature_end
    temperature_steps: int = _SAMPLER_DEFAULTS.temperature_steps
    temperature_curve: str = _SAMPLER_DEFAULTS.temperature_curve
    epsilon_cutoff: float = _SAMPLER_DEFAULTS.epsilon_cutoff
    eta_cutoff: float = _SAMPLER_DEFAULTS.eta_cutoff
    top_a: float = _SAMPLER_DEFAULTS.top_a
    no_repeat_ngram_size: int = _SAMPLER_DEFAULTS.no_repeat_ngram_size
    scaled_frequency: float = _SAMPLER_DEFAULTS.scaled_frequency
    scaled_presence: float = _SAMPLER_DEFAULTS.scaled_presence
    watermark_key: int | None = _SAMPLER_DEFAULTS.watermark_key
    watermark_gamma: float = _SAMPLER_DEFAULTS.watermark_gamma
    watermark_delta: float = _SAMPLER_DEFAULTS.watermark_delta
    watermark_scheme: str = _SAMPLER_DEFAULTS.watermark_scheme
    logit_bias: list[str] = field(default_factory=list)
    ban: list[str] = field(default_factory=list)
    samplers: str | None = None
    preset: str | None = None
    top_n: int = 20
    ctx_size: int = 2048
    threads: int | None = None
    gpu_layers: int = 0
    engine: str | None = None
    logprobs: int = 20
    engine_timeout: float = 60.0


_SHARED_OPTIONS: dict[str, tuple[Any, Any]] = {
    "model": (Optional[str], typer.Option("--model", "-m", help="Catalogue name (see `tokenlab models list`) or path to a .gguf file. Default: smollm2-135m.", rich_help_panel="Model")),
    "chat": (Optional[bool], typer.Option("--chat/--raw", help="Wrap the prompt in the model's chat template, or feed it as is. Default: chat when the model ships a template.", show_default=False, rich_help_panel="Model")),
    "ctx_size": (int, typer.Option("--ctx-size", "-c", help="Context size in tokens.", rich_help_panel="Model")),
    "threads": (Optional[int], typer.Option("--threads", "-t", help="CPU threads. Default: all cores.", rich_help_panel="Model")),
    "gpu_layers": (int, typer.Option("--gpu-layers", "-ngl", help="Layers to offload to the GPU (Metal/CUDA builds); -1 for all.", rich_help_panel="Model")),
    "engine": (Optional[str], typer.Option("--engine", help="URL of an OpenAI-compatible server (llama-server, vLLM, llama_cpp.server) to use instead of a local model, e.g. http://gpu-box:8080; --model then names the server's model. Each step is the server's top --logprobs candidates plus the mass of the rest.", rich_help_panel="Model")),
    "logprobs": (int, typer.Option("--logprobs", help="With --engine: candidates asked per step (the server's top K; 1..1000).", rich_help_panel="Model")),
    "engine_timeout": (float, typer.Option("--engine-timeout", help="With --engine: seconds to wait for one answer before retrying (twice) and giving up.", rich_help_panel="Model")),
    "seed": (Optional[int], typer.Option("--seed", "-s", help="Random seed; the same seed, prompt, model and knobs give the same tokens. Default: a random seed (printed).", rich_help_panel="Sampling")),
    "max_tokens": (int, typer.Option("--max-tokens", "-n", help="Stop after this many tokens.", rich_help_panel="Sampling")),
    "temperature": (float, typer.Option("--temperature", "--temp", help="Softmax temperature; 0 = greedy.", rich_help_panel="Sampling")),
    "top_k": (int, typer.Option("--top-k", help="Keep the k most likely tokens; 0 = off.", rich_help_panel="Sampling")),
    "top_p": (float, typer.Option("--top-p", help="Keep the smallest set whose probability reaches p; 1 = off.", rich_help_panel="Sampling")),
    "min_p": (float, typer.Option("--min-p", help="Drop tokens below min_p x the top probability; 0 = off.", rich_help_panel="Sampling")),
    "typical_p": (float, typer.Option("--typical-p", help="Locally typical sampling mass; 1 = off.", rich_help_panel="Sampling")),
    "repeat_penalty": (float, typer.Option("--repeat-penalty", help="Divide (positive) or multiply (negative) logits of recent tokens; 1 = off.", rich_help_panel="Sampling")),
    "frequency_penalty": (float, typer.Option("--frequency-penalty", help="Subtract count x this from recent tokens' logits; 0 = off.", rich_help_panel="Sampling")),
    "presence_penalty": (float, typer.Option("--presence-penalty", help="Subtract this from logits of tokens seen recently; 0 = off.", rich_help_panel="Sampling")),
    "penalty_last_n": (int, typer.Option("--penalty-last-n", help="How many recent tokens the penalties look at; 0 = off, -1 = all.", rich_help_panel="Sampling")),
    "min_keep": (int, typer.Option("--min-keep", help="Filters keep at least this many tokens.", rich_help_panel="Sampling")),
    "logit_bias": (Optional[list[str]], typer.Option("--logit-bias", "-b", help="TOKEN=BIAS added to a token's logit (repeatable). TOKEN is its text, e.g. ' Paris=5', or #ID.", rich_help_panel="Sampling")),
    "ban": (Optional[list[str]], typer.Option("--ban", help="Never sample TOKEN (text or #ID; repeatable).", rich_help_panel="Sampling")),
    "samplers": (Optional[str], typer.Option("--samplers", help="Stage order, comma-separated, or an order preset: llama.cpp (default), transformers, greedy, mirostat. Unlisted stages are off.", rich_help_panel="Sampling")),
    "preset": (Optional[str], typer.Option("--preset", help="Start from a named preset of all knobs: greedy, llama.cpp, transformers, creative, deterministic-ish, penalized, mirostat, or one you saved in the lab; flags that differ from their defaults override it.", rich_help_panel="Sampling")),
    "top_n_sigma": (float, typer.Option("--top-n-sigma", help="Keep logits >= max - n·sigma; <= 0 = off.", rich_help_panel="More samplers")),
    "xtc_threshold": (float, typer.Option("--xtc-threshold", help="XTC: tokens above this probability are candidates for removal.", rich_help_panel="More samplers")),
    "xtc_probability": (float, typer.Option("--xtc-probability", help="XTC: chance per step of removing all but the least likely token above the threshold; 0 = off.", rich_help_panel="More samplers")),
    "dry_multiplier": (float, typer.Option("--dry-multiplier", help="DRY repetition penalty strength; 0 = off.", rich_help_panel="More samplers")),
    "dry_base": (float, typer.Option("--dry-base", help="DRY: base of the exponential penalty.", rich_help_panel="More samplers")),
    "dry_allowed_length": (int, typer.Option("--dry-allowed-length", help="DRY: repeats up to this length are free.", rich_help_panel="More samplers")),
    "dry_penalty_last_n": (int, typer.Option("--dry-penalty-last-n", help="DRY: tokens of history scanned; -1 = all.", rich_help_panel="More samplers")),
    "dry_sequence_breaker": (Optional[list[str]], typer.Option("--dry-sequence-breaker", help="DRY: text that breaks a repeat (repeatable). Default: llama.cpp's newline, ':', '\"', '*'.", rich_help_panel="More samplers")),
    "mirostat": (int, typer.Option("--mirostat", help="2 = mirostat v2 (targets a surprise of tau); 0 = off.", rich_help_panel="More samplers")),
    "mirostat_tau": (float, typer.Option("--mirostat-tau", "--mirostat-ent", help="Mirostat target surprise (bits).", rich_help_panel="More samplers")),
    "mirostat_eta": (float, typer.Option("--mirostat-eta", "--mirostat-lr", help="Mirostat learning rate.", rich_help_panel="More samplers")),
    "dynatemp_range": (float, typer.Option("--dynatemp-range", help="Dynamic temperature: T ± range by the step's entropy; 0 = off.", rich_help_panel="More samplers")),
    "dynatemp_exponent": (float, typer.Option("--dynatemp-exponent", help="Dynamic temperature exponent.", rich_help_panel="More samplers")),
    "temperature_end": (Optional[float], typer.Option("--temperature-end", help="Temperature schedule: move from --temperature to this over --temperature-steps tokens.", rich_help_panel="More samplers")),
    "temperature_steps": (int, typer.Option("--temperature-steps", help="Temperature schedule length in tokens.", rich_help_panel="More samplers")),
    "temperature_curve": (str, typer.Option("--temperature-curve", help="Temperature schedule: linear or exponential.", rich_help_panel="More samplers")),
    "epsilon_cutoff": (float, typer.Option("--epsilon-cutoff", help="Drop tokens with p < epsilon (transformers); 0 = off.", rich_help_panel="More samplers")),
    "eta_cutoff": (float, typer.Option("--eta-cutoff", help="Entropy-scaled cut-off (transformers); 0 = off.", rich_help_panel="More samplers")),
    "top_a": (float, typer.Option("--top-a", help="Drop tokens with p < top_a · p_max² (text-generation-webui); 0 = off.", rich_help_panel="More samplers")),
    "no_repeat_ngram_size": (int, typer.Option("--no-repeat-ngram-size", help="Never repeat an n-gram of this size (transformers); 0 = off.", rich_help_panel="More samplers")),
    "scaled_frequency": (float, typer.Option("--scaled-frequency", help="Frequency penalty as a per-token temperature (>= 1; 1 = off).", rich_help_panel="More samplers")),
    "scaled_presence": (float, typer.Option("--scaled-presence", help="Presence penalty as a per-token temperature (>= 1; 1 = off).", rich_help_panel="More samplers")),
    "watermark_key": (Optional[int], typer.Option("--watermark-key", help="KGW watermark: key of the green lists (an integer); unset = no watermark. `tokenlab score --watermark-key K` detects it.", rich_help_panel="Watermark")),
    "watermark_gamma": (float, typer.Option("--watermark-gamma", help="Watermark: fraction of the vocabulary in each green list.", rich_help_panel="Watermark")),
    "watermark_delta": (float, typer.Option("--watermark-delta", help="Watermark: added to the green tokens' logits; 0 = off.", rich_help_panel="Watermark")),
    "watermark_scheme": (str, typer.Option("--watermark-scheme", help="Watermark green lists: lefthash (the previous token) or selfhash (4 tokens, salted with the candidate).", rich_help_panel="Watermark")),
    "top_n": (int, typer.Option("--top-n", help="Candidates recorded per step.", rich_help_panel="Output")),
}


_LIST_OPTIONS = ("logit_bias", "ban", "dry_sequence_breaker")


def with_run_options(func: Callable[..., Any] | None = None, *, exclude: tuple[str, ...] = ()) -> Any:
    """Add the shared model and sampler flags to a command; it receives them as `opts: RunOptions`.

    `exclude` leaves some shared flags out (a command whose own flags need those names).
    """
    if func is None:
        return functools.partial(with_run_options, exclude=exclude)
    defaults = RunOptions()
    shared_options = {name: spec for name, spec in _SHARED_OPTIONS.items() if name not in exclude}
    hints = typing.get_type_hints(func, include_extras=True)  # real objects, not `from __future__` strings
    own = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in inspect.signature(func).parameters.values()
        if p.name != "opts"
    ]
    shared = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=getattr(defaults, name) if name not in _LIST_OPTIONS else None,
            annotation=Annotated[annotation, option],
        )
        for name, (annotation, option) in shared_options.items()
    ]
    own_positional = [p for p in own if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    own_keyword = [p for p in own if p.kind is inspect.Parameter.KEYWORD_ONLY]

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in shared_options}
        for name in _LIST_OPTIONS:
            values[name] = values.get(name) or []
        with user_errors():
            return func(opts=RunOptions(**values), **kwargs)

    wrapper.__signature__ = inspect.Signature([*own_positional, *own_keyword, *shared])  # type: ignore[attr-defined]
    return wrapper


# -- building a run -------------------------------------------------------------------------------


def parse_token(engine: Any, spec: str, flag: str) -> int:
    """A token given as #ID or as its exact text."""
    if spec.startswith("#") and spec[1:].lstrip("-").isdigit():
        token_id = int(spec[1:])
        if not 0 <= token_id < engine.n_vocab:
            raise UserError(f"{flag} {spec}: token id is outside the vocabulary (0..{engine.n_vocab - 1})")
        return token_id
    if not spec:
        raise UserError(f"{flag} needs a token: its text or #ID")
    try:
        return engine.find_token(spec)
    except ValueError as exc:
        raise UserError(f"{flag} {spec!r}: {exc}") from None


def parse_logit_bias(engine: Any, specs: list[str]) -> dict[int, float]:
    """{token id: bias} from TOKEN=BIAS flags (split at the last '=', so a token may contain '=')."""
    biases: dict[int, float] = {}
    for spec in specs:
        token, sep, bias_text = spec.rpartition("=")
        if not sep or not token:
            raise UserError(f"--logit-bias {spec!r}: expected TOKEN=BIAS, e.g. ' Paris=5' or '#7042=-2'")
        try:
            bias = float(bias_text)
        except ValueError:
            raise UserError(f"--logit-bias {spec!r}: {bias_text!r} is not a number") from None
        if math.isnan(bias) or bias == math.inf:
            raise UserError(f"--logit-bias {spec!r}: bias must be a finite number or -inf")
        token_id = parse_token(engine, token, "--logit-bias")
        biases[token_id] = biases.get(token_id, 0.0) + bias
    return biases


_KNOB_FIELDS = (
    "temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty", "frequency_penalty",
    "presence_penalty", "penalty_last_n", "min_keep", "top_n_sigma", "xtc_threshold", "xtc_probability",
    "dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n", "mirostat", "mirostat_tau",
    "mirostat_eta", "dynatemp_range", "dynatemp_exponent", "temperature_end", "temperature_steps",
    "temperature_curve", "epsilon_cutoff", "eta_cutoff", "top_a", "no_repeat_ngram_size", "scaled_frequency",
    "scaled_presence", "watermark_key", "watermark_gamma", "watermark_delta", "watermark_scheme",
)
"""RunOptions fields that are SamplerParams fields of the same name."""


def base_params(opts: RunOptions) -> Any:
    """The preset named by --preset (or the defaults), with every flag that differs from its default on top."""
    from tokenlab.sampling import ORDER_PRESETS, parse_samplers

    if opts.preset is not None:
        from tokenlab.presets import load_preset

        base = load_preset(opts.preset)
    else:
        base = SamplerParams()
    defaults = RunOptions()
    changes: dict[str, Any] = {
        name: getattr(opts, name) for name in _KNOB_FIELDS if getattr(opts, name) != getattr(defaults, name)
    }
    if opts.samplers is not None:
        order = opts.samplers.strip()
        if not order.strip(",; "):
            raise UserError(
                "--samplers is empty, which would switch every stage off; list stages (e.g. top_k,temperature) "
                f"or name an order preset: {', '.join(ORDER_PRESETS)}"
            )
        changes["samplers"] = ORDER_PRESETS[order] if order in ORDER_PRESETS else parse_samplers(order)
    params = base.replace(**changes) if changes else base
    if params.watermark_key is not None and "watermark" not in params.samplers:
        raise UserError("--watermark-key needs the watermark stage, which this --samplers order leaves out: "
                        "add 'watermark' to it (before the first cut, e.g. after 'dry')")
    if params.mirostat == 2 and "mirostat_v2" not in params.samplers:
        raise UserError(
            "--mirostat 2 has no effect: the --samplers list lacks mirostat_v2; add it, or use --samplers mirostat"
        )
    return params


def sampler_params(opts: RunOptions, engine: Any = None) -> Any:
    """Validated SamplerParams from the flags (token names resolved with the engine's vocabulary)."""
    from tokenlab.sampling import DRY_DEFAULT_BREAKERS, dry_breaker_sequences

    params = base_params(opts)
    changes: dict[str, Any] = {}
    if opts.logit_bias:
        changes["logit_bias"] = {**params.logit_bias, **parse_logit_bias(engine, opts.logit_bias)}
    if opts.ban:
        changes["ban"] = tuple(dict.fromkeys((*params.ban, *(parse_token(engine, spec, "--ban") for spec in opts.ban))))
    if engine is not None and params.dry_multiplier > 0 and not params.dry_sequence_breakers:
        breakers = opts.dry_sequence_breaker or list(DRY_DEFAULT_BREAKERS)
        changes["dry_sequence_breakers"] = dry_breaker_sequences(
            breakers, lambda text: engine.tokenize(text, add_bos=False, special=False),
            # a server's vocabulary would take a request per token: its breakers are their own tokenizations
            None if getattr(engine, "remote", False) else [engine.piece(i) for i in range(engine.n_vocab)],
        )
    return params.replace(**changes) if changes else params


MAX_TOP_N = 1000
"""Most candidates a step may record (a table of the whole vocabulary helps nobody)."""


def check_options(opts: RunOptions) -> None:
    """Reject out-of-range flags before the model loads (the sampler params validate the rest)."""
    if opts.max_tokens < 1:
        raise UserError(f"--max-tokens must be at least 1, got {opts.max_tokens}")
    if not 1 <= opts.top_n <= MAX_TOP_N:
        raise UserError(f"--top-n must be in 1..{MAX_TOP_N:,}, got {opts.top_n}")
    if opts.model is not None and not opts.model.strip():
        raise UserError("--model is empty; give a catalogue name (see tokenlab models list) or a .gguf path")
    engine_options_from(opts)
    if opts.seed is not None and not 0 <= opts.seed < 2**63:
        raise UserError(f"--seed must be a non-negative integer below 2**63, got {opts.seed}")
    if opts.engine is not None:
        remote_options(opts)
    # validate the numeric knobs now, so a bad flag fails fast, before loading a model
    check = RunOptions(**{**opts.__dict__, "logit_bias": [], "ban": []})
    sampler_params(check)


def remote_options(opts: RunOptions) -> Any:
    """RemoteOptions from the --engine flags (checked before anything connects)."""
    from tokenlab.engine.remote import RemoteOptions

    try:
        return RemoteOptions(model=opts.model, top_k=opts.logprobs, timeout=opts.engine_timeout, n_ctx=opts.ctx_size)
    except ValueError as exc:
        raise UserError(f"--{exc}") from None


def load_engine(opts: RunOptions) -> Any:
    """Connect to --engine, or resolve --model (pulling a catalogue model on first use) and load it."""
    from tokenlab.engine import Engine
    from tokenlab.engine.models import resolve_model

    if opts.engine is not None:
        from tokenlab.engine.remote import RemoteEngine

        return RemoteEngine(opts.engine, remote_options(opts))

    engine_options = engine_options_from(opts)
    path = resolve_model(opts.model)
    return Engine(path, engine_options)


def distribution_json(engine: Any, rest_mass: float | None = None) -> dict[str, Any]:
    """For a remote engine, {"distribution": ...} saying the probabilities are a server's top K plus the rest."""
    if not getattr(engine, "remote", False):
        return {}
    note: dict[str, Any] = {"source": "server", "url": engine.url, "top_k": engine.top_k}
    if rest_mass is not None:
        note["rest_mass"] = rest_mass
    return {"distribution": note}


def engine_options_from(opts: RunOptions) -> Any:
    """EngineOptions from --ctx-size, --threads and --gpu-layers; UserError naming the flag."""
    from tokenlab.engine import EngineOptions

    try:
        return EngineOptions(n_ctx=opts.ctx_size, n_threads=opts.threads, n_gpu_layers=opts.gpu_layers)
    except ValueError as exc:
        name, _, rest = str(exc).partition(" ")
        raise UserError(f"--{name.replace('_', '-')} {rest}") from None


def prompt_tokens(engine: Any, prompt: str, opts: RunOptions) -> list[int]:
    """The prompt's token ids in the chosen chat/raw mode, checked against the context size."""
    if not prompt.strip():
        raise UserError("the prompt is empty; give some text, e.g. tokenlab generate 'Once upon a time'")
    tokens = engine.format_prompt(prompt, chat=opts.chat)
    if len(tokens) >= engine.n_ctx:
        raise UserError(
            f"the prompt is {len(tokens)} tokens but the context holds {engine.n_ctx}; "
            "shorten it or raise --ctx-size"
        )
    return tokens


def read_prompt(prompt: str) -> str:
    """The prompt argument, or standard input when it is '-'."""
    if prompt == "-":
        return read_stdin()
    return prompt


def read_stdin() -> str:
    """Standard input as UTF-8 text; UserError when it is not UTF-8."""
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"standard input is not UTF-8 text (byte {exc.start}); convert it, e.g. with iconv") from None


def prepare_run(prompt: str, opts: RunOptions, *, example: str) -> tuple[Any, list[int], Any]:
    """Check the flags and the prompt, load the model: (engine, prompt token ids, sampler params)."""
    prompt = read_prompt(prompt)
    check_options(opts)
    if not prompt.strip():
        raise UserError(f"the prompt is empty; give some text, e.g. {example}")
    engine = load_engine(opts)
    params = sampler_params(opts, engine)
    return engine, prompt_tokens(engine, prompt, opts), params


# -- commands -------------------------------------------------------------------------------------


@app.command()
@with_run_options
def generate(
    prompt: Annotated[str, typer.Argument(help="Text to continue ('-' reads standard input).", show_default=False)],
    *,
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f", help="text streams the output; jsonl prints one JSON object per token and a final summary.", rich_help_panel="Output")] = OutputFormat.text,
    opts: RunOptions,
) -> None:
    """Generate text from PROMPT with the sampler knobs, streaming it to stdout."""
    from tokenlab.engine.text import terminal_safe
    from tokenlab.lab import Generation

    engine, tokens, params = prepare_run(prompt, opts, example="tokenlab generate 'Once upon a time'")
    seed = opts.seed if opts.seed is not None else secrets.randbits(32)
    generation = Generation(
        engine, tokens, params,
        seed=seed, max_tokens=opts.max_tokens, top_n=opts.top_n,
        record=output_format is OutputFormat.jsonl,  # plain text needs no candidates or raw statistics
    )
    out = sys.stdout
    # on a terminal, a token's control characters are shown, not obeyed; a pipe or file gets the text as is
    shown: Callable[[str], str] = terminal_safe if out.isatty() else str
    started = time.perf_counter()
    for step in generation.run():
        if output_format is OutputFormat.jsonl:
            out.write(json.dumps(step.to_json(), ensure_ascii=False) + "\n")
        else:
            out.write(shown(step.text))
        out.flush()
    wall = time.perf_counter() - started
    tokens = len(generation.steps)
    tokens_per_second = tokens / wall if wall > 0 else 0.0
    text = generation.text + generation.held_text
    if output_format is OutputFormat.jsonl:
        summary = {
            "done": True,
            "text": text,
            "stop_reason": generation.stop_reason,
            "tokens": tokens,
            "tokens_per_second": round(tokens_per_second, 2),
            "seed": seed,
            "prompt_tokens": len(generation.prompt_tokens),
            "model": engine.name,
            **distribution_json(engine),
        }
        out.write(json.dumps(summary, ensure_ascii=False) + "\n")
    else:
        out.write(shown(generation.held_text) + "\n")
        err_console.print(
            f"[dim]{tokens} tokens · {tokens_per_second:.1f} tok/s · stop: {generation.stop_reason} · seed {seed}[/]",
            markup=True,
        )
        if getattr(engine, "remote", False):
            err_console.print(f"[dim]{engine.distribution_note}[/]", markup=True, soft_wrap=True)
    out.flush()


@app.command("inspect")
@with_run_options
def inspect_command(
    prompt: Annotated[str, typer.Argument(help="Text whose next token to inspect ('-' reads standard input).", show_default=False)],
    *,
    output_format: Annotated[InspectFormat, typer.Option("--format", "-f", help="table (rich) or json.", rich_help_panel="Output")] = InspectFormat.table,
    stages: Annotated[bool, typer.Option("--stages", help="Show the distribution after every stage: survivors, mass kept, cut-off, the top candidates moving from stage to stage.", rich_help_panel="Output")] = False,
    opts: RunOptions,
) -> None:
    """Show the next-token distribution after PROMPT: the top candidates and what each stage kept."""
    from tokenlab.engine.text import visible
    from tokenlab.lab import Generation
    from tokenlab.render import candidates_table

    engine, tokens, params = prepare_run(prompt, opts, example="tokenlab inspect 'The capital of France is'")
    generation = Generation(engine, tokens, params, seed=0, top_n=opts.top_n)
    frontier = generation.frontier()
    candidates = frontier.candidates(engine.token_text, opts.top_n)
    result = frontier.result
    stage_rows = [{"name": stage.name, "kept": int(stage.n_kept)} for stage in result.stages]
    final_entropy = max(0.0, result.final_entropy_bits)
    view = None
    if stages:
        from tokenlab.lab.stages import stage_view

        view = stage_view(result, frontier.raw, [c.id for c in candidates[:10]], engine.token_text,
                          rest_mass=frontier.rest_mass, seen=frontier.seen)
    if output_format is InspectFormat.json:
        payload = {
            "model": engine.name,
            "prompt_tokens": len(generation.prompt_tokens),
            **distribution_json(engine, frontier.rest_mass),
            "candidates": [candidate.to_json() for candidate in candidates],
            "entropy": frontier.raw.entropy_bits,
            "final_entropy": final_entropy,
            "entropy_unit": "bits",
            "survivors": int(result.final_ids.shape[0]),
            "stages": view.to_json()["stages"] if view is not None else stage_rows,
        }
        sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
        return
    console = Console(highlight=False)
    console.print(candidates_table(candidates, title=f"next token after the prompt · {visible(engine.name)}"))
    if view is not None:
        print_stage_view(console, view)
    pipeline = " → ".join(f"{stage['name']} ({stage['kept']:,})" for stage in stage_rows) or "(no stage active)"
    if frontier.rest_mass is not None:
        console.print(f"server top {frontier.seen:,} (rest of the vocabulary: p = {frontier.rest_mass:.4g}, not sampled) → {pipeline}")
        console.print(engine.distribution_note)
    else:
        console.print(f"vocabulary {engine.n_vocab:,} → {pipeline}")
    console.print(
        f"entropy: raw {frontier.raw.entropy_bits:.3f} bits · final {final_entropy:.3f} bits · "
        f"{result.final_ids.shape[0]:,} token{'s' if result.final_ids.shape[0] != 1 else ''} can be drawn"
    )


MAX_ROLLOUTS = 100_000
"""Most continuations one rollouts command samples."""


@app.command()
@with_run_options(exclude=("max_tokens",))
def rollouts(
    prompt: Annotated[str, typer.Argument(help="Prompt to sample continuations of ('-' reads standard input).", show_default=False)],
    *,
    count: Annotated[int, typer.Option("-n", "--count", help="How many continuations to sample.", rich_help_panel="Rollouts")] = 64,
    length: Annotated[int, typer.Option("--length", "-L", help="Tokens per continuation.", rich_help_panel="Rollouts")] = 16,
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f", help="text (tables) or jsonl (one object per distinct continuation, then a summary).", rich_help_panel="Output")] = OutputFormat.text,
    opts: RunOptions,
) -> None:
    """Sample N continuations of PROMPT in one batch and check them against the sampler's promise.

    Prints the distinct continuations grouped by first token, with counts and probabilities, and the
    empirical check: the observed frequency of each first token next to the probability the pipeline
    predicted, with a chi-square goodness-of-fit p-value.
    """
    from tokenlab.commands.rollouts import print_rollouts, progress_bar
    from tokenlab.lab.rollouts import run_rollouts

    if not 1 <= count <= MAX_ROLLOUTS:
        raise UserError(f"-n/--count must be in 1..{MAX_ROLLOUTS:,}, got {count}")
    if not 1 <= length <= opts.ctx_size:
        raise UserError(f"--length must be in 1..{opts.ctx_size} (the --ctx-size), got {length}")
    engine, tokens, params = prepare_run(prompt, opts, example="tokenlab rollouts 'The capital of France is' -n 64")
    seed = opts.seed if opts.seed is not None else secrets.randbits(32)
    with progress_bar(err_console) as progress:
        result = run_rollouts(engine, tokens, params, n=count, length=length, seed=seed, top_n=opts.top_n,
                              progress=progress)
    print_rollouts(result, Console(highlight=False), output_format.value,
                   extra={"model": engine.name, "seed": seed, **distribution_json(engine)})
    if getattr(engine, "remote", False):
        err_console.print(f"[dim]{engine.distribution_note}; {engine.decode_calls} completion requests "
                          "(one per sequence and token: a server has no shared batch here)[/]", markup=True,
                          soft_wrap=True)


def forwarded_flags(opts: RunOptions) -> list[str]:
    """The shared flags whose values differ from their defaults, as arguments for another tokenlab command."""
    defaults = RunOptions()
    arguments: list[str] = []
    for name, (_, option) in _SHARED_OPTIONS.items():
        value = getattr(opts, name)
        if value == getattr(defaults, name):
            continue
        # in an Annotated typer.Option the first name sits in `default`, the others in `param_decls`
        names = (option.default, *option.param_decls)
        flag = next(name for name in names if isinstance(name, str) and name.startswith("--"))
        if isinstance(value, bool):  # --chat/--raw
            on, _, off = flag.partition("/")
            arguments.append(on if value else off)
        elif isinstance(value, list):
            arguments += [f"{flag}={item}" for item in value]
        else:
            arguments.append(f"{flag}={value}")  # '=' keeps a negative value from reading as a flag
    return arguments


@app.command()
@with_run_options
def serve(
    prompt: Annotated[Optional[str], typer.Argument(help="Prompt the lab starts from. Default: a short-story prompt.", show_default=False)] = None,
    *,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (localhost by default: only this machine can connect; 0.0.0.0: every interface).", rich_help_panel="Server")] = "localhost",
    port: Annotated[int, typer.Option("--port", help="TCP port.", rich_help_panel="Server")] = 8000,
    no_token: Annotated[bool, typer.Option("--no-token", help="Serve without the secret token in the URL: anyone who can reach the port can start labs.", rich_help_panel="Server")] = False,
    max_labs: Annotated[int, typer.Option("--max-labs", help="Most labs (browser tabs, one process each) running at once.", rich_help_panel="Server")] = 4,
    files_dir: Annotated[Path, typer.Option("--files-dir", help="The one directory served labs read (g with a path) and write (s) files in. Default: the current directory.", rich_help_panel="Server")] = Path("."),
    opts: RunOptions,
) -> None:
    """Serve the lab to a web browser (textual-serve): each browser tab gets its own lab.

    The URL printed carries a secret token (as Jupyter's does); pages of other sites cannot drive a lab.
    """
    import shlex

    from tokenlab.serve import WILDCARD_HOSTS, AddressError, LabServer, check_address, url_host

    check_options(opts)
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be in 1..65535, got {port}")
    if max_labs < 1:
        raise UserError(f"--max-labs must be at least 1, got {max_labs}")
    if not files_dir.is_dir():
        raise UserError(f"--files-dir {files_dir} is not a directory; create it or name another")
    try:
        check_address(host, port)
    except AddressError as exc:
        raise UserError(str(exc)) from None
    from tokenlab.engine.models import resolve_model

    if opts.engine is None:
        path = resolve_model(opts.model)  # pull it now, with progress, not inside a browser tab
        opts.model = str(path)
    root = files_dir.resolve()
    command = shlex.join([sys.executable, "-m", "tokenlab", "lab", prompt or DEFAULT_LAB_PROMPT,
                          *forwarded_flags(opts), f"--files-dir={root}"])
    token = None if no_token else secrets.token_urlsafe(24)
    if host in WILDCARD_HOSTS:
        err_console.print(f"warning: --host {host or '(empty)'} listens on every network interface: anyone who can "
                          "reach this machine can open the page" + ("" if no_token else " (the token still guards the labs)"),
                          markup=False)
    if no_token:
        err_console.print("warning: --no-token: no secret guards the labs; any user or program that can reach the "
                          "port can run labs and read and write files in " + str(root), markup=False)
    browse_host = "localhost" if host in WILDCARD_HOSTS else url_host(host)
    url = f"http://{browse_host}:{port}/" + (f"?token={token}" if token else "")

    def announce() -> None:
        err_console.print(f"serving the lab on {url}", markup=False, soft_wrap=True)
        err_console.print(f"labs read and write files in {root}; at most {max_labs} at once (Ctrl-C stops)",
                          markup=False, soft_wrap=True)

    server = LabServer(command, host=host, port=port, token=token, max_labs=max_labs, announce=announce)
    try:
        server.serve()
    except AddressError as exc:
        raise UserError(str(exc)) from None


class ExportFormat(str, Enum):
    """What export writes."""

    md = "md"
    html = "html"


@app.command()
def export(
    session_file: Annotated[Path, typer.Argument(help="A session saved in the lab (s) or autosaved.", show_default=False)],
    *,
    output_format: Annotated[ExportFormat, typer.Option("--format", "-f", help="md (text and per-token probabilities) or html (a standalone heat-coloured page with hover tables).")] = ExportFormat.html,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write (atomically; a symlink's target is replaced, never a directory, device or FIFO); '-' or no -o: standard output.")] = None,
) -> None:
    """Export the branch on screen of a saved session as Markdown or a standalone HTML page."""
    from tokenlab.export import to_html, to_markdown
    from tokenlab.files import NotARegularFileError, write_text_atomic
    from tokenlab.lab.session import SessionError
    from tokenlab.lab.session import load as load_session

    with user_errors():
        try:
            session = load_session(session_file)
        except SessionError as exc:
            raise UserError(str(exc)) from None
        text = to_markdown(session) if output_format is ExportFormat.md else to_html(session)
        if output is None or str(output) == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        if output.is_dir():
            raise UserError(f"--output {output} is a directory, not a regular file; give a file name, e.g. {output / 'session.html'}")
        try:
            written = write_text_atomic(output, text)
        except NotARegularFileError as exc:
            raise UserError(f"-o {exc} (or -o - for standard output)") from None
        except OSError as exc:
            raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None
        err_console.print(f"wrote {written}", markup=False)


@app.command()
def score(
    file: Annotated[str, typer.Argument(help="Text file to score ('-' reads standard input).", show_default=False)],
    *,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Catalogue name or path to a .gguf file. Default: smollm2-135m.")] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f", help="text (heat-coloured, with a summary) or jsonl (one object per token, then a summary).")] = OutputFormat.text,
    top_n: Annotated[int, typer.Option("--top-n", help="Candidates the model expected, recorded per token.")] = 5,
    ctx_size: Annotated[int, typer.Option("--ctx-size", "-c", help="Context window; longer texts slide across it.")] = 2048,
    threads: Annotated[Optional[int], typer.Option("--threads", "-t", help="CPU threads. Default: all cores.")] = None,
    gpu_layers: Annotated[int, typer.Option("--gpu-layers", "-ngl", help="Layers to offload to the GPU; -1 for all.")] = 0,
    watermark_key: Annotated[Optional[int], typer.Option("--watermark-key", help="Test the text for the KGW watermark of this key (as generated with --watermark-key).", rich_help_panel="Watermark")] = None,
    watermark_gamma: Annotated[float, typer.Option("--watermark-gamma", help="Green fraction the text was generated with.", rich_help_panel="Watermark")] = _SAMPLER_DEFAULTS.watermark_gamma,
    watermark_scheme: Annotated[str, typer.Option("--watermark-scheme", help="Green-list scheme the text was generated with: lefthash or selfhash.", rich_help_panel="Watermark")] = _SAMPLER_DEFAULTS.watermark_scheme,
    engine: Annotated[Optional[str], typer.Option("--engine", help="URL of an OpenAI-compatible server to score with instead of a local model (one request per token; a token outside the server's top --logprobs gets no probability).")] = None,
    logprobs: Annotated[int, typer.Option("--logprobs", help="With --engine: candidates asked per token (1..1000).")] = 20,
    engine_timeout: Annotated[float, typer.Option("--engine-timeout", help="With --engine: seconds to wait for one answer.")] = 60.0,
) -> None:
    """Score an existing text: the probability, rank and entropy the model gives each of its tokens."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from tokenlab.engine.text import terminal_safe
    from tokenlab.lab.score import RANK_BUCKETS, WatermarkTest, file_text, score_text
    from tokenlab.render import detectgpt_text, heat_color, prob_heat, watermark_colour, watermark_legend, watermark_line

    with user_errors():
        if not 0 <= top_n <= MAX_TOP_N:
            raise UserError(f"--top-n must be in 0..{MAX_TOP_N:,}, got {top_n}")
        if model is not None and not model.strip():
            raise UserError("--model is empty; give a catalogue name (see tokenlab models list) or a .gguf path")
        engine_options_from(RunOptions(ctx_size=ctx_size, threads=threads, gpu_layers=gpu_layers))
        watermark = None
        if watermark_key is not None:
            # the same checks as generation's flags, before the model loads
            checked = SamplerParams(watermark_key=watermark_key, watermark_gamma=watermark_gamma,
                                    watermark_scheme=watermark_scheme)
            watermark = WatermarkTest(watermark_key, checked.watermark_gamma, checked.watermark_scheme)
        if file == "-":
            text = file_text(read_stdin())
        else:
            path = Path(file)
            if not path.exists():
                raise UserError(f"file not found: {file}")
            if path.is_dir():
                raise UserError(f"{file} is a directory; give a text file to score")
            try:
                text = file_text(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise UserError(f"{file} is not UTF-8 text") from None
            except OSError as exc:
                raise UserError(f"cannot read {file}: {exc.strerror or exc}") from None
        if not text.strip():
            raise UserError(f"{'standard input' if file == '-' else file} is empty: nothing to score")
        engine = load_engine(RunOptions(model=model, ctx_size=ctx_size, threads=threads, gpu_layers=gpu_layers,
                                        engine=engine, logprobs=logprobs, engine_timeout=engine_timeout))
        with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"),
                      TimeRemainingColumn(), console=err_console, transient=True,
                      disable=not err_console.is_terminal) as progress:
            task = progress.add_task("score", total=None)
            result = score_text(engine, text, top_n=top_n, watermark=watermark,
                                progress=lambda done, total: progress.update(task, completed=done, total=total))
        if output_format is OutputFormat.jsonl:
            for index in range(len(result.tokens)):
                sys.stdout.write(json.dumps(result.token_json(index), ensure_ascii=False) + "\n")
            sys.stdout.write(json.dumps({**result.summary(), **distribution_json(engine)}, ensure_ascii=False) + "\n")
            return
        console = Console(highlight=False)
        coloured = Text()
        detection = result.watermark
        for index, token in enumerate(result.tokens):
            if detection is not None:  # the watermark test replaces the heat colours
                style = f"black on {watermark_colour(detection.green[index], detection.counted[index])}"
            else:
                style = "" if token.prob is None else f"black on {heat_color(prob_heat(token.prob))}"
            coloured.append(terminal_safe(token.text), style=style)
        console.print(coloured)
        console.print(watermark_legend() if detection is not None else mode_legend("raw"))
        histogram = result.histogram()
        summary = result.summary()
        scored = max(1, len(result.scored))
        ranks = " · ".join(f"{label} {histogram[label]} ({100 * histogram[label] / scored:.0f}%)"
                           for _, label in RANK_BUCKETS)
        console.print(
            f"{len(result.tokens)} tokens · mean log-prob {result.mean_logprob:.3f} nats · "
            f"perplexity {result.perplexity:.2f} · {detectgpt_text(summary['fast_detectgpt'])} · "
            f"{result.windows} window{'s' if result.windows != 1 else ''}"
        )
        console.print(f"ranks: {ranks}")
        if "watermark" in summary:
            console.print(watermark_line(summary["watermark"]))
        if getattr(engine, "remote", False):
            console.print(f"{engine.distribution_note}; {result.outside_top_k} token"
                          f"{'s' if result.outside_top_k != 1 else ''} fell outside it (no probability, left out "
                          "of the mean and the ranks)", soft_wrap=True)


DEFAULT_LAB_PROMPT = "Write a short story about a lighthouse keeper."


@app.command()
@with_run_options
def lab(
    prompt: Annotated[Optional[str], typer.Argument(help="Prompt to start from ('-' reads standard input). Default: a short-story prompt.", show_default=False)] = None,
    *,
    paused: Annotated[bool, typer.Option("--paused", help="Open paused at the first step instead of generating at once.", rich_help_panel="Output")] = False,
    load: Annotated[Optional[Path], typer.Option("--load", help="Open a saved session (its prompt, knobs and tree) without re-running the model.", rich_help_panel="Output")] = None,
    save: Annotated[Optional[Path], typer.Option("--save", help="Where s saves the session (default: tokenlab-session.json).", rich_help_panel="Output")] = None,
    restore: Annotated[bool, typer.Option("--restore", help="Open the session autosaved when the lab last quit.", rich_help_panel="Output")] = False,
    files_dir: Annotated[Optional[Path], typer.Option("--files-dir", help="Read (g with a path) and write (s) files only inside this directory, by relative paths (tokenlab serve sets it).", rich_help_panel="Output")] = None,
    opts: RunOptions,
) -> None:
    """Open the lab: live heat-coloured generation with hotkey knobs (press ? inside for every key)."""
    session = None
    if restore:
        from tokenlab.lab.session import autosave_path

        if load is not None:
            raise UserError("--restore and --load both name a session; give one")
        load = autosave_path()  # the newest of the labs that quit
        if not load.exists():
            raise UserError(f"there is no autosaved session yet (in {load.parent}); it is written when the lab quits")
    if load is not None:
        from tokenlab.lab.session import SessionError
        from tokenlab.lab.session import load as load_session

        try:
            session = load_session(load)
        except SessionError as exc:
            raise UserError(str(exc)) from None
        prompt = session.prompt
        opts.chat = session.chat
    if prompt == "-":
        prompt = read_prompt(prompt)
        keyboard_from_terminal()
    run_lab(prompt if prompt is not None else DEFAULT_LAB_PROMPT, opts, paused=paused or session is not None,
            session=session, save_path=str(save) if save is not None else (str(load) if load is not None else None),
            files_dir=files_dir)


def keyboard_from_terminal() -> None:
    """After the prompt came on standard input, read the lab's keys from the terminal (/dev/tty) instead."""
    import os

    try:
        terminal = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        raise UserError(
            "the lab needs a keyboard, but standard input held the prompt and there is no terminal; "
            "pass the prompt as an argument"
        ) from None
    os.dup2(terminal, 0)
    os.close(terminal)
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - stays open for the app


def run_lab(prompt: str, opts: RunOptions, *, paused: bool = False, session: Any = None,
            save_path: str | None = None, files_dir: Path | None = None) -> None:
    """Check the flags, make sure the model file is there (pulling it with progress), then run the TUI."""
    from tokenlab.engine import Engine
    from tokenlab.engine.models import resolve_model
    from tokenlab.lab.controller import LabSettings
    from tokenlab.tui.app import TokenLabApp

    check_options(opts)
    if not prompt.strip():
        raise UserError("the prompt is empty; give some text, e.g. tokenlab lab 'Once upon a time'")
    if files_dir is not None and not files_dir.is_dir():
        raise UserError(f"--files-dir {files_dir} is not a directory; create it or name another")
    engine_options = engine_options_from(opts)
    path = resolve_model(opts.model) if opts.engine is None else None
    settings = LabSettings(
        prompt=prompt,
        chat=opts.chat,
        params=sampler_params(RunOptions(**{**opts.__dict__, "logit_bias": [], "ban": []})),
        seed=opts.seed if opts.seed is not None else secrets.randbits(32),
        max_tokens=opts.max_tokens,
        top_n=opts.top_n,
        autostart=not paused,
        session=session,
        save_path=save_path,
        files_dir=str(files_dir.resolve()) if files_dir is not None else None,
    )
    if session is not None:
        settings.params = session.params
        settings.seed = session.seed
        settings.max_tokens = session.max_tokens

    def prepare(engine: Engine) -> Any:
        try:
            return sampler_params(opts, engine)  # token names in --logit-bias/--ban need the vocabulary
        except UserError as exc:
            raise ValueError(f"{exc}; the lab runs without these biases") from None

    if session is None:
        settings.prepare = prepare

    def load() -> Engine:
        # runs on the controller thread: the screen is up while the model loads, and every decode of
        # this process happens on that one thread
        if opts.engine is not None:
            return load_engine(opts)  # type: ignore[no-any-return]
        assert path is not None
        return Engine(path, engine_options)

    app = TokenLabApp(load, settings)
    if session is None:
        from tokenlab.lab.session import autosave_path

        if autosave_path().exists():
            app.startup_note = "your last session was autosaved: tokenlab lab --restore brings it back"
    run_app(app)


EXIT_CRASH = 1


def run_app(app: Any, **run_options: Any) -> None:
    """Run the lab app; if an unexpected error stopped it, say so in one line and exit with status 1."""
    app.run(**run_options)
    if app.crash is None and not app.return_code:
        return
    what = app.crash or f"the lab stopped with status {app.return_code}"
    notes = []
    if app.autosaved is not None:
        notes.append("your session was autosaved: tokenlab lab --restore brings it back")
    if app.crash_log is not None:
        notes.append(f"the traceback is in {app.crash_log}")
    line = Text.assemble(("error:", "bold red"), f" the lab stopped on an unexpected error: {what}",
                         f" ({'; '.join(notes)})" if notes else "")
    err_console.print(line, soft_wrap=True, highlight=False)
    raise typer.Exit(EXIT_CRASH)


def print_stage_view(console: Console, view: Any) -> None:
    """Two rich tables: what each stage kept, and the top candidates' probability after each stage."""
    from tokenlab.render import stage_view_tables

    summary, moves = stage_view_tables(view)
    console.print(summary)
    console.print(moves)


@app.callback(invoke_without_command=True)
def main_callback(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """A terminal sampling lab: watch a local language model pick its next token.

    With no command, opens the lab on the default model (same as `tokenlab lab`).
    """
    if version:
        typer.echo(f"tokenlab {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        with user_errors():
            run_lab(DEFAULT_LAB_PROMPT, RunOptions())


def _mount_models() -> None:
    from tokenlab.commands.models import app as models_app

    app.add_typer(models_app, name="models", help="List, pull and locate GGUF models.")


def _mount_doctor() -> None:
    from tokenlab.commands.doctor import doctor

    app.command("doctor")(doctor)


def _mount_lesson() -> None:
    from tokenlab.commands.lesson import lesson

    app.command("lesson")(lesson)


_mount_models()
_mount_doctor()
_mount_lesson()


def main() -> None:
    """Console-script entry point: a failed write to standard output is one line, not a traceback."""
    code: int | str | None = 0
    try:
        app()
    except SystemExit as exit_:
        code = exit_.code
    except OSError as exc:  # e.g. `tokenlab models list > /dev/full`: rich flushes inside the command
        code = _output_failed(exc)
    try:
        sys.stdout.flush()  # here, not at interpreter exit, where a failure is a traceback and code 120
    except OSError as exc:
        code = _output_failed(exc)
    sys.exit(code)


def _output_failed(exc: OSError) -> int:
    silence_stdout()
    if isinstance(exc, BrokenPipeError):
        return 0  # the reader went away (`| head`): nothing more to say
    err_console.print(f"[bold red]error:[/] {escape(describe_os_error(exc))}", markup=True, soft_wrap=True)
    return 1


if __name__ == "__main__":
    main()
