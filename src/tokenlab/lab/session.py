"""Sessions: the prompt, the model, the knobs and the tree of runs with every step's record, as JSON.

Loading a session restores what was on screen without running the model. Files carry a format name and
a version; writes are atomic (a temp file in the same directory, then a rename), so an interrupted save
leaves the previous file intact. Floats that JSON has no word for (NaN for steps made by rollouts, -inf
for a ban through a logit bias) are written as Python's json writes them (NaN, -Infinity).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tokenlab.files import write_text_atomic
from tokenlab.lab.step import Candidate, Rewind, Step
from tokenlab.lab.tree import GenerationTree, TreeNode
from tokenlab.sampling import SamplerParams
from tokenlab.errors import TokenlabError

FORMAT = "tokenlab-session"
VERSION = 1


class SessionError(TokenlabError, ValueError):
    """A session file that cannot be read; str() is one line saying what is wrong and what to do."""


@dataclass
class Session:
    """Everything needed to show a lab session again."""

    prompt: str
    params: SamplerParams = field(default_factory=SamplerParams)
    chat: bool | None = None
    model: str = ""
    """The model's name (and where it was loaded from, for information)."""
    model_path: str = ""
    flash_attention: bool = False
    """Whether the model ran with llama.cpp's fused attention (its probabilities differ a little)."""
    seed: int = 0
    max_tokens: int = 256
    tree: GenerationTree = field(default_factory=GenerationTree)
    current: tuple[int, ...] = ()
    """Token ids of the branch on screen."""

    def to_json(self) -> dict[str, Any]:
        """The session as plain JSON values (keys in a fixed order, so saving twice gives the same bytes)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "prompt": self.prompt,
            "chat": self.chat,
            "model": self.model,
            "model_path": self.model_path,
            "flash_attn": self.flash_attention,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "params": self.params.to_dict(),
            "current": list(self.current),
            "runs": self.tree.runs,
            "tree": _tree_to_json(self.tree),
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "the session") -> Session:
        """A session from `to_json()` output; SessionError for anything else."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SessionError(f"{source} is not a tokenlab session (no \"format\": \"{FORMAT}\")")
        version = data.get("version")
        if version != VERSION:
            raise SessionError(f"{source} is a version {version!r} session; this tokenlab reads version {VERSION}")
        try:
            prompt = _checked(data, "prompt", str)
            if not isinstance(data.get("params"), dict):
                raise _FieldError("params", "expected an object of sampler knobs")
            try:
                params = SamplerParams.from_dict(data["params"])
            except (TypeError, ValueError) as exc:
                raise _FieldError("params", str(exc)) from None
            chat = _checked(data, "chat", (bool, type(None)))
            tree = GenerationTree(prompt)
            tree.runs = _integer(data, "runs", low=0)
            tree.root.count = tree.runs
            nodes = _checked(data, "tree", list)
            _tree_from_json(nodes, tree)
            current = _checked(data, "current", list)
            return cls(
                prompt=prompt,
                params=params,
                chat=chat,
                model=_checked(data, "model", str),
                model_path=_checked(data, "model_path", str),
                flash_attention=_checked(data, "flash_attn", bool) if "flash_attn" in data else False,
                seed=_integer(data, "seed", low=0, high=2**63 - 1),
                max_tokens=_integer(data, "max_tokens", low=1),
                tree=tree,
                current=tuple(_integer(current, i, low=0, where="current") for i in range(len(current))),
            )
        except _FieldError as exc:
            raise SessionError(f"{source} is damaged ({exc}); it cannot be loaded") from None
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise SessionError(f"{source} is damaged ({detail}); it cannot be loaded") from None

    def current_steps(self) -> list[Step]:
        """The steps of the branch on screen (empty when that branch is not in the tree)."""
        node = self.tree.find(self.current)
        return node.path() if node is not None else []


def dumps(session: Session) -> str:
    """The session file's text."""
    return json.dumps(session.to_json(), ensure_ascii=False, indent=1) + "\n"


def save(session: Session, path: str | os.PathLike[str]) -> Path:
    """Write the session atomically: a temp file next to `path`, then a rename over it."""
    return write_text_atomic(path, dumps(session))


AUTOSAVES_KEPT = 20
"""Autosaves kept: one per lab session that quit, the oldest dropped first."""


def autosave_dir() -> Path:
    """Where labs autosave on exit: $TOKENLAB_DATA/autosave/, else in the user data dir."""
    import platformdirs

    base = os.environ.get("TOKENLAB_DATA") or platformdirs.user_data_dir("tokenlab")
    return Path(base) / "autosave"


def new_autosave_slot() -> str:
    """A slot name of its own for one lab session (several labs, or serve tabs, never share one)."""
    import time

    return f"{time.time_ns()}-{os.getpid()}"


def autosave_path(slot: str | None = None) -> Path:
    """The autosave file of `slot`; without one, the newest autosave (what `lab --restore` opens)."""
    if slot is not None:
        return autosave_dir() / f"{slot}.json"
    saves = autosaves()
    return saves[0] if saves else autosave_dir() / "none.json"


def autosaves() -> list[Path]:
    """Every autosave, newest first."""
    def modified(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:
            return 0.0

    try:
        found = [path for path in autosave_dir().glob("*.json") if path.is_file()]
    except OSError:
        return []
    return sorted(found, key=lambda path: (modified(path), path.name), reverse=True)


def prune_autosaves(keep: int = AUTOSAVES_KEPT) -> None:
    """Delete all but the `keep` newest autosaves."""
    for path in autosaves()[keep:]:
        path.unlink(missing_ok=True)


def load(path: str | os.PathLike[str]) -> Session:
    """Read a session file; SessionError (one line) when it is missing, corrupt or not a session."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SessionError(f"session file not found: {source}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SessionError(f"cannot read {source}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SessionError(f"{source} is not valid JSON (line {exc.lineno}): is it a tokenlab session?") from None
    return Session.from_json(data, str(source))


# -- steps and nodes ----------------------------------------------------------------------------------


def step_to_json(step: Step) -> dict[str, Any]:
    """Every field of a step record (the session keeps them all, unlike the jsonl stream)."""
    values: dict[str, Any] = {}
    for item in fields(Step):
        value = getattr(step, item.name)
        if item.name == "top":
            value = [[c.id, c.text, c.logit, c.prob, c.final_prob, c.removed_by] for c in value]
        elif item.name == "sampler_state":
            value = dict(value) if value else None
        elif item.name == "rewound":
            if not value:
                continue  # most steps: no rewinds, and files of runs without phrase bans stay as they were
            value = [{"phrase": r.phrase, "ids": list(r.ids), "texts": list(r.texts)} for r in value]
        elif item.name == "negative":
            if not value:
                continue  # only guided steps carry it
            value = [list(entry) for entry in value]
        values[item.name] = value
    return values


def step_from_json(data: dict[str, Any], where: str = "step") -> Step:
    """A step record from step_to_json(); _FieldError (a ValueError) naming the first bad field."""
    if not isinstance(data, dict):
        raise _FieldError(where, "expected an object")
    unknown = sorted(set(data) - {item.name for item in fields(Step)})
    if unknown:
        raise _FieldError(f"{where}.{unknown[0]}", "unknown field")
    rows = _checked(data, "top", list, where)
    top = []
    for number, row in enumerate(rows):
        at = f"{where}.top[{number}]"
        if not isinstance(row, list) or len(row) != 6:
            expected = "[id, text, logit, prob, final_prob, removed_by]"
            raise _FieldError(at, f"expected {expected}, got {_short(row)}")
        named = dict(zip(("id", "text", "logit", "prob", "final_prob", "removed_by"), row))
        top.append(Candidate(
            _integer(named, "id", low=0, where=at),
            _checked(named, "text", str, at),
            _number(named, "logit", at),
            _probability(named, "prob", at),
            _probability(named, "final_prob", at),
            _checked(named, "removed_by", (str, type(None)), at),
        ))
    state = _checked(data, "sampler_state", (dict, type(None)), where) if "sampler_state" in data else None
    return Step(
        index=_integer(data, "index", low=0, where=where),
        id=_integer(data, "id", low=0, where=where),
        piece=_checked(data, "piece", str, where),
        text=_checked(data, "text", str, where),
        logit=_number(data, "logit", where),
        prob=_probability(data, "prob", where),
        final_prob=_probability(data, "final_prob", where),
        rank=_integer(data, "rank", low=0, where=where),
        entropy=_number(data, "entropy", where),
        final_entropy=_number(data, "final_entropy", where),
        top=tuple(top),
        forced=_checked(data, "forced", bool, where) if "forced" in data else False,
        eog=_checked(data, "eog", bool, where) if "eog" in data else False,
        sampler_state=state,
        dice=_dice(data, where),
        rest_mass=_probability(data, "rest_mass", where) if data.get("rest_mass") is not None else None,
        allowed=_integer(data, "allowed", low=0, where=where) if data.get("allowed") is not None else None,
        rewound=_rewound(data, where),
        negative=_negative(data, where),
    )


def _negative(data: dict[str, Any], where: str) -> tuple[tuple[int, str, float], ...]:
    """The negative context's top candidates recorded on a guided step (none when absent)."""
    if data.get("negative") is None:
        return ()
    entries = []
    for number, row in enumerate(_checked(data, "negative", list, where)):
        at = f"{where}.negative[{number}]"
        if not isinstance(row, list) or len(row) != 3:
            raise _FieldError(at, f"expected [id, text, prob], got {_short(row)}")
        entries.append((_integer(row, 0, low=0, where=at), _checked(row, 1, str, at), _probability(row, 2, at)))
    return tuple(entries)


def _rewound(data: dict[str, Any], where: str) -> tuple[Rewind, ...]:
    """The phrase-ban rewinds recorded on a step (none when the field is absent)."""
    if data.get("rewound") is None:
        return ()
    rewinds = []
    for number, item in enumerate(_checked(data, "rewound", list, where)):
        at = f"{where}.rewound[{number}]"
        if not isinstance(item, dict):
            raise _FieldError(at, f"expected {{\"phrase\", \"ids\", \"texts\"}}, got {_short(item)}")
        ids = _checked(item, "ids", list, at)
        texts = _checked(item, "texts", list, at)
        if len(ids) != len(texts) or not ids:
            raise _FieldError(f"{at}.ids", "expected one or more ids, as many as texts")
        rewinds.append(Rewind(
            phrase=_checked(item, "phrase", str, at),
            ids=tuple(_integer(ids, i, low=0, where=f"{at}.ids") for i in range(len(ids))),
            texts=tuple(_checked(texts, i, str, f"{at}.texts") for i in range(len(texts))),
        ))
    return tuple(rewinds)


def _dice(data: dict[str, Any], where: str) -> tuple[float, float] | None:
    """The draw (u, mass before the token) of a step, when it was recorded."""
    if data.get("dice") is None:
        return None
    pair = _checked(data, "dice", list, where)
    if len(pair) != 2:
        raise _FieldError(f"{where}.dice", f"expected [u, before], got {_short(pair)}")
    return (_probability(pair, 0, f"{where}.dice"), _probability(pair, 1, f"{where}.dice"))


class _FieldError(ValueError):
    """One field of a session that has the wrong type or range: str() names the field."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f'"{field_name}": {problem}')


def _name(container: Any, key: str | int, where: str) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _checked(container: Any, key: str | int, kind: type | tuple[type, ...], where: str = "") -> Any:
    """container[key] when it is of `kind`; _FieldError naming the field otherwise."""
    name = _name(container, key, where)
    try:
        value = container[key]
    except (KeyError, IndexError):
        raise _FieldError(name, "missing") from None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise _FieldError(name, f"expected {_expected(kinds)}, got {_short(value)}")
    return value


_KIND_NAMES = {str: "text", bool: "true or false", list: "a list", dict: "an object", int: "an integer",
               float: "a number", type(None): "null"}


def _expected(kinds: tuple[type, ...]) -> str:
    """What a field may hold, in words ("a number" for int or float)."""
    words = ["a number" if kind is int and float in kinds else _KIND_NAMES[kind] for kind in kinds]
    return " or ".join(dict.fromkeys(words))


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _integer(container: Any, key: str | int, *, low: int, high: int | None = None, where: str = "") -> int:
    """An integer field in [low, high]; _FieldError naming the field otherwise."""
    value = _checked(container, key, (int, float), where)
    name = _name(container, key, where)
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise _FieldError(name, f"expected an integer, got {_short(value)}")
    number = int(value)
    if number < low or (high is not None and number > high):
        limit = f"in {low}..{high}" if high is not None else f">= {low}"
        raise _FieldError(name, f"expected an integer {limit}, got {_short(value)}")
    return number


def _number(container: Any, key: str | int, where: str) -> float:
    """A number field (NaN and infinities allowed: rollouts and bans write them)."""
    return float(_checked(container, key, (int, float), where))


def _probability(container: Any, key: str | int, where: str) -> float:
    """A probability field in [0, 1] (NaN allowed: steps made by rollouts have no raw probability)."""
    value = _number(container, key, where)
    if not (math.isnan(value) or 0.0 <= value <= 1.0):
        raise _FieldError(_name(container, key, where), f"expected a probability in [0, 1], got {value!r}")
    return value


def _tree_to_json(tree: GenerationTree) -> list[dict[str, Any]]:
    """The tree's nodes as a flat list, parents before children (a long run must not nest deeply)."""
    nodes: list[dict[str, Any]] = []
    pending: list[tuple[TreeNode, int]] = [(child, -1) for child in reversed(tree.root.children.values())]
    while pending:
        node, parent = pending.pop()
        assert node.step is not None
        nodes.append({"parent": parent, "step": step_to_json(node.step), "count": node.count,
                      "ends": node.ends, "stop_reason": node.stop_reason})
        index = len(nodes) - 1
        pending.extend((child, index) for child in reversed(node.children.values()))
    return nodes


def _tree_from_json(nodes: list[Any], tree: GenerationTree) -> None:
    made: list[TreeNode] = []
    for number, data in enumerate(nodes):
        where = f"tree[{number}]"
        if not isinstance(data, dict):
            raise _FieldError(where, "expected an object")
        parent_index = _integer(data, "parent", low=-1, where=where)
        if parent_index >= len(made):
            raise _FieldError(f"{where}.parent", f"names node {parent_index}, which comes later")
        parent = tree.root if parent_index < 0 else made[parent_index]
        step = step_from_json(_checked(data, "step", dict, where), f"{where}.step")
        node = TreeNode(step=step, parent=parent, count=_integer(data, "count", low=0, where=where),
                        ends=_integer(data, "ends", low=0, where=where),
                        stop_reason=_checked(data, "stop_reason", (str, type(None)), where))
        parent.children[step.id] = node
        made.append(node)
