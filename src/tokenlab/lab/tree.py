"""The generation tree: every run and every branch from one prompt, sharing their common prefixes.

A node is a token at a position; its children are the different tokens that followed it in some run.
Runs that pass through an edge count on it, so loop mode over a low top-k shows the near-deterministic
tree it produces. Nothing is thrown away: regenerating or choosing another candidate adds a branch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from tokenlab.lab.step import Step


@dataclass(eq=False)
class TreeNode:
    """One token in the tree (the root stands for the prompt and has no step)."""

    step: Step | None
    parent: TreeNode | None = None
    children: dict[int, TreeNode] = field(default_factory=dict)
    """Child nodes by token id, in the order they first appeared."""
    count: int = 0
    """Runs that passed through this node."""
    ends: int = 0
    """Runs that ended at this node."""
    stop_reason: str | None = None
    """Why the last run that ended here stopped."""

    @property
    def depth(self) -> int:
        """0 for the root, i + 1 for the token at step i."""
        return 0 if self.step is None else self.step.index + 1

    @property
    def token_id(self) -> int | None:
        """The token of this node (None for the root)."""
        return None if self.step is None else self.step.id

    def path(self) -> list[Step]:
        """The steps from the prompt to this node."""
        steps: list[Step] = []
        node: TreeNode | None = self
        while node is not None and node.step is not None:
            steps.append(node.step)
            node = node.parent
        steps.reverse()
        return steps

    def siblings(self) -> list[TreeNode]:
        """This node and the other tokens its parent was followed by, in order of appearance."""
        return list(self.parent.children.values()) if self.parent is not None else [self]

    def leaves(self) -> Iterator[TreeNode]:
        """Nodes below (or at) this one with no children, depth first (iterative: runs can be long)."""
        pending = [self]
        while pending:
            node = pending.pop()
            if not node.children:
                yield node
            else:
                pending.extend(reversed(node.children.values()))

    def deepest_leaf(self) -> TreeNode:
        """The most recently added leaf below this node (follows the last child at each fork)."""
        node = self
        while node.children:
            node = list(node.children.values())[-1]
        return node


class GenerationTree:
    """All branches generated from one prompt."""

    def __init__(self, prompt: str = "") -> None:
        self.prompt = prompt
        self.root = TreeNode(step=None)
        self.runs = 0

    def add(self, steps: Sequence[Step], *, stop_reason: str | None = None, count: bool = True) -> TreeNode:
        """Insert a branch (merging the prefix it shares with earlier ones); returns its last node.

        `count` adds one run to every edge on the way (False records a branch without counting it, e.g.
        a partial run that will be added again when it finishes).
        """
        node = self.root
        if count:
            node.count += 1
        for step in steps:
            child = node.children.get(step.id)
            if child is None:
                child = TreeNode(step=step, parent=node)
                node.children[step.id] = child
            elif step.rewound and child.step is not None and len(child.step.rewound) < len(step.rewound):
                child.step = step  # the same token, drawn again after a phrase-ban rewind: keep that record
            node = child
            if count:
                node.count += 1
        if count:
            node.ends += 1
            node.stop_reason = stop_reason
        if count:
            self.runs += 1
        return node

    def find(self, token_ids: Sequence[int]) -> TreeNode | None:
        """The node reached by these token ids from the root, if that branch exists."""
        node = self.root
        for token_id in token_ids:
            child = node.children.get(int(token_id))
            if child is None:
                return None
            node = child
        return node

    def branches(self) -> list[TreeNode]:
        """Every leaf: one per distinct branch."""
        return list(self.root.leaves())

    def finished(self) -> list[TreeNode]:
        """Every node where a run ended (a run may end where another goes on), depth first."""
        found: list[TreeNode] = []
        pending = [self.root]
        while pending:
            node = pending.pop()
            if node.ends:
                found.append(node)
            pending.extend(reversed(node.children.values()))
        return found

    def forks(self) -> list[TreeNode]:
        """Nodes where branches diverge (more than one child), shallowest first."""
        found: list[TreeNode] = []
        queue = [self.root]
        while queue:
            node = queue.pop(0)
            if len(node.children) > 1:
                found.append(node)
            queue.extend(node.children.values())
        return found

    def __len__(self) -> int:
        """Number of token nodes."""
        total = 0
        queue = [self.root]
        while queue:
            node = queue.pop()
            total += len(node.children)
            queue.extend(node.children.values())
        return total


def branch_point(node: TreeNode) -> TreeNode | None:
    """The deepest node on the way to `node` whose parent has other children: where this branch split off."""
    current: TreeNode | None = node
    while current is not None and current.parent is not None:
        if len(current.parent.children) > 1:
            return current
        current = current.parent
    return None


@dataclass(frozen=True)
class Segment:
    """A row of the tree view: a fork's child and the single-child chain below it, up to the next fork."""

    path: tuple[int, ...]
    """Token ids from the root to the segment's last node (switching to it shows that branch)."""
    depth: int
    """Nesting level (forks above it)."""
    start_step: int
    """Step index of the segment's first token."""
    token: str
    """The first token's text: the one that made this branch diverge."""
    prob: float
    """Raw probability of that token."""
    final_prob: float
    count: int
    """Runs through the segment's first token."""
    text: str
    """The text of the whole segment."""
    tokens: int
    ends: int
    stop_reason: str | None
    children: int
    """Segments below this one."""


def segments(tree: GenerationTree, *, max_children: int | None = None) -> list[Segment]:
    """The tree as rows, depth first; forks with more than `max_children` children show the most run ones."""
    rows: list[Segment] = []

    def visit(first: TreeNode, depth: int) -> None:
        node = first
        texts = []
        while True:
            assert node.step is not None
            texts.append(node.step.text if not node.step.eog else f"⟨{node.step.piece}⟩")
            if len(node.children) != 1:
                break
            node = next(iter(node.children.values()))
        assert first.step is not None
        path = tuple(step.id for step in node.path())
        children = list(node.children.values())
        prob = first.step.prob if first.step.prob == first.step.prob else first.step.final_prob  # NaN: a rollout
        rows.append(Segment(path, depth, first.step.index, first.step.text or first.step.piece, prob,
                            first.step.final_prob, first.count, "".join(texts), len(texts), node.ends,
                            node.stop_reason, len(children)))
        if max_children is not None and len(children) > max_children:
            children = sorted(children, key=lambda child: -child.count)[:max_children]
        for child in children:
            visit(child, depth + 1)

    for child in tree.root.children.values():
        visit(child, 0)
    return rows
