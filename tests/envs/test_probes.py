"""General-ability probes: project-written items, exact scoring, no repeats across a probe set."""

from __future__ import annotations

from lifelong.envs import make
from lifelong.envs.probes import FACTS, INSTRUCTIONS, matches
from lifelong.streams.stream import ProbeSet, Task


def test_fact_answers_match_short_replies_only() -> None:
    assert matches("Paris", ("paris",))
    assert matches("The capital of France is Paris.", ("paris",))
    assert matches("7 days", ("7", "seven"))
    assert not matches("17", ("7", "seven"))  # whole words only
    assert not matches("Paris, London, Rome, Madrid, Berlin, Tokyo, Cairo", ("paris",))  # listing is not knowing


def test_instructions_are_scored_exactly() -> None:
    env = make("instruct")
    for seed in range(len(INSTRUCTIONS)):
        _, info = env.reset(seed=seed)
        assert env.step(info["answer"].upper() + ".").reward == 1.0  # case and end punctuation aside
        env.reset(seed=seed)
        assert env.step(info["answer"] + " and more").reward == 0.0


def test_probe_sets_of_up_to_the_item_count_never_repeat_a_question() -> None:
    for name, count in (("facts", len(FACTS)), ("instruct", len(INSTRUCTIONS))):
        probe = ProbeSet(Task.of(name), count)
        assert len(probe.keys) == count


def test_fresh_items_are_distinct_held_out_and_the_same_every_call() -> None:
    probe = ProbeSet(Task.of("add", max_value=20), 32)
    env = probe.task.make()
    fresh = probe.fresh_seeds(64)
    keys = [env.item_key(s) for s in fresh]
    assert len(fresh) == 64 and len(set(keys)) == 64 and not set(keys) & probe.keys
    assert probe.fresh_seeds(64) == fresh
    facts = ProbeSet(Task.of("facts"), 32)  # a small task has fewer: never a repeat, never a probe
    assert 0 < len(facts.fresh_seeds(64)) == len(FACTS) - 32


def test_instruction_kinds_are_mixed() -> None:
    kinds = {item.meta["kind"] for item in INSTRUCTIONS[:12]}
    assert kinds == {"reply", "repeat", "digits", "opposite"}
