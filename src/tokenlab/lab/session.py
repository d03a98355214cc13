"""Sessions: the prompt, the model, the knobs and the tree of runs with every step's record, as JSON.

Loading a session restores what was on screen without running the model. Files carry a format name and
a version; writes are atomic (a temp file in the same directory, then a rename), so an interrupted save
leaves the previous file intact. Floats that JSON has no word for (NaN for steps made by rollouts, -inf
for a ban through a logit bias) are written as Python's json writes them (NaN, -Infinity).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tokenlab.files import write_text_atomic
from tokenlab.lab.step import Candidate, Step
from tokenlab.lab.tree import GenerationTree, TreeNode
from tokenlab.sampling import SamplerParams

FORMAT = "tokenlab-session"
VERSION = 1


class SessionError(ValueError):
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
            params = SamplerParams.from_dict(data["params"])
            tree = GenerationTree(str(data["prompt"]))
            tree.runs = int(data["runs"])
            tree.root.count = tree.runs
            _tree_from_json(data["tree"], tree)
            return cls(
                prompt=str(data["prompt"]),
                params=params,
                chat=data["chat"] if data["chat"] is None else bool(data["chat"]),
                model=str(data["model"]),
                model_path=str(data["model_path"]),
                seed=int(data["seed"]),
                max_tokens=int(data["max_tokens"]),
                tree=tree,
                current=tuple(int(token_id) for token_id in data["current"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
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


def autosave_path() -> Path:
    """Where the lab autosaves on exit: $TOKENLAB_DATA/autosave.json, else the user data dir."""
    import platformdirs

    base = os.environ.get("TOKENLAB_DATA") or platformdirs.user_data_dir("tokenlab")
    return Path(base) / "autosave.json"


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
        values[item.name] = value
    return values


def step_from_json(data: dict[str, Any]) -> Step:
    """A step record from step_to_json()."""
    values = dict(data)
    values["top"] = tuple(Candidate(int(c[0]), str(c[1]), float(c[2]), float(c[3]), float(c[4]), c[5])
                          for c in values["top"])
    if values.get("dice") is not None:
        values["dice"] = (float(values["dice"][0]), float(values["dice"][1]))
    return Step(**values)


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


def _tree_from_json(nodes: list[dict[str, Any]], tree: GenerationTree) -> None:
    made: list[TreeNode] = []
    for data in nodes:
        parent_index = int(data["parent"])
        if not -1 <= parent_index < len(made):
            raise ValueError(f"node {len(made)} names parent {parent_index}, which comes later")
        parent = tree.root if parent_index < 0 else made[parent_index]
        step = step_from_json(data["step"])
        node = TreeNode(step=step, parent=parent, count=int(data["count"]), ends=int(data["ends"]),
                        stop_reason=data["stop_reason"])
        parent.children[step.id] = node
        made.append(node)
