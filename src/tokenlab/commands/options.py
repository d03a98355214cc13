"""The flags shared by the commands that run the model, and building a run from them.

Sampler flags are derived from SamplerParams' field declarations (sampling/declare.py): a new knob
gets its flag, its check and its forwarding by `serve` without an edit here.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tokenlab.commands.common import user_errors
from tokenlab.errors import UserError
from tokenlab.sampling import SamplerParams
from tokenlab.sampling.declare import declared, field_default

# -- shared options -------------------------------------------------------------------------------


_SAMPLER_DEFAULTS = SamplerParams()


@dataclass(frozen=True)
class SharedOption:
    """One flag shared by the commands that run the model: its RunOptions field, type, default and typer.Option."""

    name: str
    annotation: Any
    default: Any
    option: Any


_RUN_OPTIONS: tuple[SharedOption, ...] = (
    SharedOption("model", Optional[str], None, typer.Option("--model", "-m", help="Catalogue name (see `tokenlab models list`) or path to a .gguf file. Default: smollm2-135m.", rich_help_panel="Model")),
    SharedOption("chat", Optional[bool], None, typer.Option("--chat/--raw", help="Wrap the prompt in the model's chat template, or feed it as is. Default: chat when the model ships a template.", show_default=False, rich_help_panel="Model")),
    SharedOption("ctx_size", int, 2048, typer.Option("--ctx-size", "-c", help="Context size in tokens.", rich_help_panel="Model")),
    SharedOption("threads", Optional[int], None, typer.Option("--threads", "-t", help="CPU threads. Default: all cores.", rich_help_panel="Model")),
    SharedOption("gpu_layers", int, 0, typer.Option("--gpu-layers", "-ngl", help="Layers to offload to the GPU (Metal/CUDA builds); -1 for all.", rich_help_panel="Model")),
    SharedOption("flash_attn", Optional[bool], None, typer.Option("--flash-attn/--no-flash-attn", help="llama.cpp's fused attention: faster (7-17% on a CPU for the default model), but a token's probability then depends a little on the context size and on how the text was batched. Default: off, so every number agrees to the last bit (a loaded session keeps the setting it was made with).", show_default=False, rich_help_panel="Model")),
    SharedOption("engine", Optional[str], None, typer.Option("--engine", help="URL of an OpenAI-compatible server (llama-server, vLLM, llama_cpp.server) to use instead of a local model, e.g. http://gpu-box:8080; --model then names the server's model. Each step is the server's top --logprobs candidates plus the mass of the rest.", rich_help_panel="Model")),
    SharedOption("logprobs", int, 20, typer.Option("--logprobs", help="With --engine: candidates asked per step (the server's top K; 1..1000).", rich_help_panel="Model")),
    SharedOption("engine_timeout", float, 60.0, typer.Option("--engine-timeout", help="With --engine: seconds to wait for one answer before retrying (twice) and giving up.", rich_help_panel="Model")),
    SharedOption("seed", Optional[int], None, typer.Option("--seed", "-s", help="Random seed; the same seed, prompt, model and knobs give the same tokens. Default: a random seed (printed).", rich_help_panel="Sampling")),
    SharedOption("max_tokens", int, 128, typer.Option("--max-tokens", "-n", help="Stop after this many tokens.", rich_help_panel="Sampling")),
    SharedOption("preset", Optional[str], None, typer.Option("--preset", help="Start from a named preset of all knobs: greedy, llama.cpp, transformers, creative, deterministic-ish, penalized, mirostat, or one you saved in the lab; flags that differ from their defaults override it.", rich_help_panel="Sampling")),
    SharedOption("top_n", int, 20, typer.Option("--top-n", help="Candidates recorded per step.", rich_help_panel="Output")),
)
"""The flags that are not sampler knobs."""


def _cli_annotation(hint: Any) -> Any:
    """A type typer understands: `X | None` becomes Optional[X]."""
    arguments = typing.get_args(hint)
    if type(None) in arguments and len(arguments) == 2:
        return Optional[next(argument for argument in arguments if argument is not type(None))]
    return hint


def _knob_options() -> tuple[SharedOption, ...]:
    """One flag per SamplerParams field, derived from the field's declaration (sampling/declare.py)."""
    hints = typing.get_type_hints(SamplerParams)
    options = []
    for item, declaration in declared(SamplerParams):
        if declaration.cli_type is None:  # the value itself, passed through to SamplerParams
            annotation, default = _cli_annotation(hints[item.name]), field_default(item)
        else:  # text that sampler_params turns into the value (token names, a stage list)
            annotation, default = Optional[declaration.cli_type], None
        option = typer.Option(declaration.flag, *declaration.aliases, help=declaration.help,
                              rich_help_panel=declaration.panel)
        options.append(SharedOption(item.name, annotation, default, option))
    return tuple(options)


_SHARED: tuple[SharedOption, ...] = _RUN_OPTIONS + _knob_options()
_SHARED_OPTIONS: dict[str, tuple[Any, Any]] = {entry.name: (entry.annotation, entry.option) for entry in _SHARED}
"""Every shared flag by RunOptions field: (annotation, typer.Option)."""

_TEXT_KNOBS = tuple(item.name for item, declaration in declared(SamplerParams) if declaration.cli_type is not None)
"""Knob fields whose flags are text that sampler_params resolves (logit_bias, ban, samplers, ...)."""
_KNOB_FIELDS = tuple(item.name for item, declaration in declared(SamplerParams) if declaration.cli_type is None)
"""RunOptions fields passed to SamplerParams as they are."""
_LIST_OPTIONS = tuple(entry.name for entry in _SHARED if typing.get_origin(entry.annotation) is typing.Union
                      and typing.get_origin(typing.get_args(entry.annotation)[0]) is list)
"""Repeatable flags (a list when given, [] when not)."""

RunOptions = dataclasses.make_dataclass(
    "RunOptions",
    [
        (entry.name, entry.annotation,
         dataclasses.field(default_factory=list) if entry.name in _LIST_OPTIONS else dataclasses.field(default=entry.default))
        for entry in _SHARED
    ],
    namespace={"__doc__": "The model, prompt-format and sampler flags shared by generate, inspect, rollouts, "
                          "serve and the lab (one field per shared flag, derived from the declarations)."},
)
RunOptions.__module__ = __name__


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
    changes.update(constraint_texts(opts))
    params = base.replace(**changes) if changes else base
    if params.watermark_key is not None and "watermark" not in params.samplers:
        raise UserError("--watermark-key needs the watermark stage, which this --samplers order leaves out: "
                        "add 'watermark' to it (before the first cut, e.g. after 'dry')")
    if params.mirostat and f"mirostat_v{params.mirostat}" not in params.samplers:
        raise UserError(
            f"--mirostat {params.mirostat} has no effect: the --samplers list lacks mirostat_v{params.mirostat}; "
            "add it, or use --samplers mirostat"
        )
    return params


CONSTRAINT_FLAGS = {"grammar": "--grammar", "regex": "--regex", "json_schema": "--json-schema"}
"""The constraint flags, by RunOptions field (the SamplerParams field of the same name holds the text)."""


def read_constraint_file(flag: str, path: str, what: str) -> str:
    """The UTF-8 text of a constraint file; UserError naming the flag when it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{flag} {path}: {exc.strerror or exc}; give the path of {what}") from None
    except UnicodeDecodeError:
        raise UserError(f"{flag} {path} is not UTF-8 text; give {what}") from None
    if not text.strip():
        raise UserError(f"{flag} {path} is empty; give {what}")
    return text


def constraint_texts(opts: RunOptions) -> dict[str, str]:
    """The constraint --grammar, --regex or --json-schema sets (at most one), as {SamplerParams field: text}."""
    given = [name for name in CONSTRAINT_FLAGS if getattr(opts, name) is not None]
    if len(given) > 1:
        raise UserError(f"{' and '.join(CONSTRAINT_FLAGS[name] for name in given)} both constrain the output; give one")
    if not given or given[0] == "regex":  # the pattern is the value itself
        return {}
    name = given[0]
    what = "a GBNF grammar file" if name == "grammar" else "a JSON schema file"
    return {name: read_constraint_file(CONSTRAINT_FLAGS[name], getattr(opts, name), what)}


def sampler_params(opts: RunOptions, engine: Any = None) -> Any:
    """Validated SamplerParams from the flags (token names resolved with the engine's vocabulary)."""
    from tokenlab.sampling import DRY_DEFAULT_BREAKERS, dry_breaker_sequences

    params = base_params(opts)
    changes: dict[str, Any] = {}
    if opts.logit_bias:
        changes["logit_bias"] = {**params.logit_bias, **parse_logit_bias(engine, opts.logit_bias)}
    if opts.ban:
        changes["ban"] = tuple(dict.fromkeys((*params.ban, *(parse_token(engine, spec, "--ban") for spec in opts.ban))))
    if opts.ban_phrases:
        if not all(opts.ban_phrases):
            raise UserError("--ban-phrase is empty, which would ban every text; give the phrase, e.g. --ban-phrase ' dragon'")
        changes["ban_phrases"] = (*params.ban_phrases, *opts.ban_phrases)
    if engine is not None and params.dry_multiplier > 0 and not params.dry_sequence_breakers:
        breakers = opts.dry_sequence_breakers or list(DRY_DEFAULT_BREAKERS)
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
        if opts.guidance_scale != 1.0:
            raise UserError("--guidance-scale needs a local model (a server's top K has no second sequence for "
                            "the negative prompt); drop --engine or leave the scale at 1")
    # validate the numeric knobs now, so a bad flag fails fast, before loading a model
    check = RunOptions(**{**opts.__dict__, "logit_bias": [], "ban": []})
    params = sampler_params(check)
    from tokenlab.sampling.constraint import constraint_of

    constraint = constraint_of(params)
    if constraint is not None:
        from tokenlab.engine.grammar import check_constraint_text

        check_constraint_text(*constraint)  # a constraint that does not parse fails before the model loads


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
    """EngineOptions from --ctx-size, --threads, --gpu-layers and --flash-attn; UserError naming the flag."""
    from tokenlab.engine import EngineOptions

    try:
        return EngineOptions(n_ctx=opts.ctx_size, n_threads=opts.threads, n_gpu_layers=opts.gpu_layers,
                             flash_attention=bool(opts.flash_attn))  # None (not given): off
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
