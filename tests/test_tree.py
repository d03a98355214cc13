"""The generation tree: branches share prefixes, runs count on edges, segments describe the forks."""

from __future__ import annotations

from tokenlab.lab.step import Step
from tokenlab.lab.tree import GenerationTree, branch_point, segments


def step(index: int, token_id: int, text: str, prob: float = 0.5) -> Step:
    return Step(index=index, id=token_id, piece=text, text=text, logit=0.0, prob=prob, final_prob=prob,
                rank=1, entropy=1.0, final_entropy=1.0, top=())


def branch(*tokens: tuple[int, str]) -> list[Step]:
    return [step(i, token_id, text) for i, (token_id, text) in enumerate(tokens)]


def test_branches_share_their_prefix_and_count_runs() -> None:
    tree = GenerationTree("The capital of France is")
    paris_dot = branch((1, " Paris"), (2, "."), (3, " It"))
    paris_comma = branch((1, " Paris"), (4, ","), (5, " the"))
    tree.add(paris_dot, stop_reason="max_tokens")
    tree.add(paris_dot, stop_reason="max_tokens")
    leaf = tree.add(paris_comma, stop_reason="eos")
    assert tree.runs == 3 and len(tree) == 5
    paris = tree.find([1])
    assert paris is not None and paris.count == 3 and len(paris.children) == 2
    assert tree.find([1, 2, 3]).count == 2 and tree.find([1, 2, 3]).ends == 2
    assert leaf.path() == paris_comma and leaf.stop_reason == "eos"
    assert [node.token_id for node in tree.branches()] == [3, 5]
    assert tree.forks() == [paris]
    point = branch_point(leaf)
    assert point is not None and point.token_id == 4
    assert tree.find([9]) is None


def test_an_uncounted_branch_keeps_the_text_without_a_run() -> None:
    tree = GenerationTree()
    tree.add(branch((1, "a"), (2, "b")), count=False)
    assert tree.runs == 0 and len(tree) == 2 and tree.find([1, 2]).count == 0


def test_segments_compress_chains_and_nest_forks() -> None:
    tree = GenerationTree()
    tree.add(branch((1, " Paris"), (2, "."), (3, " It")))
    tree.add(branch((1, " Paris"), (4, ","), (5, " the")))
    tree.add(branch((6, " the"), (7, " city")))
    rows = segments(tree)
    assert [(row.depth, row.token, row.text, row.count) for row in rows] == [
        (0, " Paris", " Paris", 2),
        (1, ".", ". It", 1),
        (1, ",", ", the", 1),
        (0, " the", " the city", 1),
    ]
    assert rows[1].path == (1, 2, 3) and rows[0].children == 2 and rows[1].start_step == 1
    many = GenerationTree()
    for token_id in range(10, 20):
        many.add(branch((1, "x"), (token_id, str(token_id))))
    many.add(branch((1, "x"), (15, "15")))
    collapsed = segments(many, max_children=3)
    assert len(collapsed) == 4 and collapsed[1].token == "15" and collapsed[1].count == 2


def test_loop_mode_keeps_full_records_only_up_to_its_cap(engine, monkeypatch) -> None:
    import tokenlab.lab.controller as controller_module
    from tokenlab.lab.commands import SetLoop
    from tokenlab.lab.controller import LabController, LabNotice, LabSettings
    from tokenlab.sampling import SamplerParams

    monkeypatch.setattr(controller_module, "LOOP_FULL_RUNS", 2)
    events: list[object] = []
    settings = LabSettings(prompt="Once upon a time", chat=False, max_tokens=3, seed=11, autostart=False,
                           params=SamplerParams(temperature=2.0, top_k=0))
    controller = LabController(engine, settings, emit=events.append)
    controller.send(SetLoop(True))
    controller.serve(should_stop=lambda: controller.tree.runs >= 6)
    notices = [event.message for event in events if isinstance(event, LabNotice)]
    assert len(notices) == 1 and "first 2 runs" in notices[0]  # said once, on screen
    nodes = [node for leaf in controller.tree.branches() for node in _path_nodes(leaf)]
    full = {id(node) for node in nodes if len(node.step.top) >= 20}
    slim = {id(node) for node in nodes if len(node.step.top) <= 1}
    assert len(full) <= 2 * 3 and slim  # two runs of three steps in full; the later branches slim
    for node in nodes:
        if id(node) in slim:
            assert all(candidate.id == node.step.id for candidate in node.step.top)


def _path_nodes(leaf):
    node = leaf
    while node is not None and node.step is not None:
        yield node
        node = node.parent
