"""Phrase bans with rewind on the real default model: the phrase never appears, the rewind is recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tokenlab.engine import Engine
from tokenlab.lab import Generation
from tokenlab.lab import generation as generation_module
from tokenlab.lab.session import step_from_json, step_to_json
from tokenlab.sampling import SamplerParams

PROMPT = "Write a story about a knight."


@pytest.fixture(scope="module")
def knight(engine: Engine) -> list[int]:
    return engine.format_prompt(PROMPT, chat=True)


@pytest.fixture(scope="module")
def dragon(engine: Engine) -> int:
    return engine.find_token(" dragon")


def forced_dragons(dragon: int, **changes: object) -> SamplerParams:
    """A logit bias that makes ' dragon' very likely at every step."""
    return SamplerParams(logit_bias={dragon: 8.0}, **changes)


def test_the_bias_alone_writes_the_phrase(engine: Engine, knight: list[int], dragon: int) -> None:
    generation = Generation(engine, knight, forced_dragons(dragon), seed=1, max_tokens=30)
    list(generation.run())
    assert " dragon" in generation.text  # so the ban below has something to take back


def test_a_banned_phrase_is_rewound_and_its_first_token_banned_there(
    engine: Engine, knight: list[int], dragon: int
) -> None:
    params = forced_dragons(dragon, ban_phrases=(" dragon",))
    engine.reset()
    before = engine.decoded_tokens
    generation = Generation(engine, knight, params, seed=1, max_tokens=30)
    list(generation.run())
    assert " dragon" not in generation.text
    assert len(generation.steps) == 30 and generation.rewinds > 0
    rewound = [(step.index, rewind) for step in generation.steps for rewind in step.rewound]
    assert rewound and len(rewound) == generation.rewinds
    # the KV cache was truncated, not rebuilt: the prompt once, then one token per draw (a rewind
    # decodes the token before the restart again for its logits)
    draws = 30 + sum(len(rewind.ids) for _, rewind in rewound)
    assert engine.decoded_tokens - before == len(knight) + draws - 1
    for index, rewind in rewound:
        assert rewind.phrase == " dragon" and rewind.ids[0] == dragon and rewind.text.startswith(" dragon")
        # the token drawn instead is another, and the frontier of that step shows why: the ban removed it
        assert generation.steps[index].id != dragon
        assert generation.frontier_at(index, params).result.removed_by(dragon) == "ban"
    # only there: at a step where no phrase began, no ban stage runs
    indices = {index for index, _ in rewound}
    elsewhere = next(i for i in range(rewound[0][0], 30) if i not in indices)
    assert "ban" not in [stage.name for stage in generation.frontier_at(elsewhere, params).result.stages]
    # the records say it: jsonl shows the rewound tokens, and a session keeps them
    index, rewind = rewound[0]
    record = generation.steps[index].to_json()
    assert record["rewound"][0] == {"phrase": " dragon", "tokens": [{"id": i, "text": t}
                                                                     for i, t in zip(rewind.ids, rewind.texts)]}
    saved = json.loads(json.dumps(step_to_json(generation.steps[index])))
    assert step_from_json(saved).rewound == generation.steps[index].rewound
    assert "rewound" not in step_to_json(generation.steps[index - 1]) or generation.steps[index - 1].rewound


def test_a_two_token_phrase_the_model_writes_by_itself(engine: Engine, knight: list[int]) -> None:
    plain = Generation(engine, knight, SamplerParams(temperature=0), seed=0, max_tokens=24)
    list(plain.run())
    # two consecutive tokens of the greedy text, each with text of its own, as the phrase to ban
    start = next(i for i in range(4, 20) if plain.steps[i].text.strip() and plain.steps[i + 1].text.strip()
                 and plain.steps[i + 1].text[0].isalpha())
    phrase = plain.steps[start].text + plain.steps[start + 1].text
    assert phrase in plain.text
    banned = Generation(engine, knight, SamplerParams(temperature=0, ban_phrases=(phrase,)), seed=0, max_tokens=24)
    list(banned.run())
    assert phrase not in banned.text
    # greedy: everything before the phrase is the same, and the rewind started at the phrase's first token
    step = banned.steps[start]
    assert [s.id for s in banned.steps[:start]] == [s.id for s in plain.steps[:start]]
    assert step.rewound and step.rewound[0].ids[:2] == (plain.steps[start].id, plain.steps[start + 1].id)
    assert step.id != plain.steps[start].id


def test_no_bans_and_a_phrase_never_met_change_nothing(engine: Engine, knight: list[int]) -> None:
    params = SamplerParams(temperature=1.0)
    runs = []
    for phrases in ((), ("\x00never written",)):
        engine.reset()  # both runs decode the prompt from an empty cache, so they round alike
        generation = Generation(engine, knight, params.replace(ban_phrases=phrases), seed=5, max_tokens=20)
        runs.append([json.dumps(step.to_json()) for step in generation.run()])
    assert runs[0] == runs[1]
    assert not any('"rewound"' in line for line in runs[0])


def test_settled_holds_back_what_could_still_become_a_phrase(
    engine: Engine, knight: list[int], dragon: int
) -> None:
    generation = Generation(engine, knight, SamplerParams(temperature=0), seed=0, max_tokens=12)
    list(generation.run())
    text = generation.text
    last = generation.steps[-1]
    # a phrase that begins with the last token's text and goes on: that token could still start it
    generation.params = generation.params.replace(ban_phrases=(last.text + "\x00more",))
    generation.stop_reason = None
    assert generation.settled == len(generation.steps) - 1
    generation.params = generation.params.replace(ban_phrases=("\x00",))
    assert generation.settled == len(generation.steps)
    generation.params = generation.params.replace(ban_phrases=(text[-1] + "\x00",))
    assert generation.settled <= len(generation.steps) - 1


def test_a_phrase_the_model_insists_on_is_let_through_with_one_notice(
    engine: Engine, knight: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generation_module, "MAX_REWINDS_PER_STEP", 3)
    # nearly every token of English prose begins with a space: the loop must end anyway
    generation = Generation(engine, knight, SamplerParams(temperature=0, ban_phrases=(" ",)), seed=0, max_tokens=10)
    list(generation.run())
    assert len(generation.steps) == 10 and generation.done
    assert generation.notice is not None and "let through" in generation.notice and "3 rewinds" in generation.notice
    assert " " in generation.text


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, its output a pipe."""
    return subprocess.run([sys.executable, "-m", "tokenlab", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_COLOR": "1"})


def test_generate_never_prints_a_banned_phrase_and_jsonl_records_the_rewinds() -> None:
    flags = ("Write a story about a knight.", "-n", "30", "-s", "1", "--logit-bias", " dragon=8")
    unbanned = run_cli("generate", *flags)
    assert unbanned.returncode == 0 and " dragon" in unbanned.stdout
    text = run_cli("generate", *flags, "--ban-phrase", " dragon")
    assert text.returncode == 0, text.stderr
    assert " dragon" not in text.stdout and len(text.stdout) > 40
    jsonl = run_cli("generate", *flags, "--ban-phrase", " dragon", "-f", "jsonl")
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    steps, done = records[:-1], records[-1]
    # steps come once each, in order, and only the kept ones: the rewound tokens are in "rewound" records
    assert [record["step"] for record in steps] == list(range(30)) and done["done"]
    assert "".join(record["text"] for record in steps) == done["text"] == text.stdout.rstrip("\n")
    rewinds = [rewind for record in steps for rewind in record.get("rewound", [])]
    assert rewinds and all(r["phrase"] == " dragon" and r["tokens"][0]["text"] == " dragon" for r in rewinds)
    assert " dragon" not in done["text"]
