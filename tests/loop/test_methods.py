"""The methods of the comparison, and the failure path of `lifelong`, on the tiny model.

A scripted actor decides which episodes succeed (the tiny model cannot solve anything), while the
completions are the tiny policy's own, so memory, retries and distillation run for real.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from lifelong.errors import ConfigError
from lifelong.learn.grpo import GRPOConfig
from lifelong.loop.actor import Job, play
from lifelong.loop.consolidate import consolidate
from lifelong.loop.explore import ExplorationConfig
from lifelong.loop.runtime import METHODS, RunConfig, Runtime
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.streams.stream import Stage, Stream, Task
from lifelong.types import Completion, Episode, Lesson


class ScriptedActor:
    """Plays with the real policy; an episode of a split in `succeeds` (by default a retry, with
    its lesson in context) succeeds, any other attempt fails."""

    def __init__(self, runtime: Runtime, succeeds: tuple[str, ...] = ("retry",)) -> None:
        self.runtime = runtime
        self.succeeds = succeeds
        self.contexts: list[str] = []
        self.temperatures: dict[str, set[float]] = {}

    def play(self, jobs: Sequence[Job], gen: GenerationConfig) -> list[Episode]:
        self.contexts += [j.context for j in jobs]
        for j in jobs:
            self.temperatures.setdefault(j.split, set()).add(gen.temperature)
        episodes = play(self.runtime.policy, jobs, self.runtime.make_env, gen)
        return [
            Episode(e.id, e.env, e.seed, e.turns, float(e.split in self.succeeds), e.split in self.succeeds, e.info,
                    e.adapter_version, e.group, e.split, e.created)
            for e in episodes
        ]  # fmt: skip

    def prefetch(self, jobs: Sequence[Job], gen: GenerationConfig) -> None:
        pass


def _config(method: str) -> RunConfig:
    stream = Stream("t", (Stage(Task.of("add", max_value=3), 16),), probe_size=2)
    return RunConfig.for_method(
        method,
        stream=stream.to_dict(),
        prompts_per_step=2,
        eval_every=0,
        answer_tokens=3,
        grpo=GRPOConfig(group_size=4),
    )


def _runtime(method: str, policy: Policy, tmp_path: Path) -> tuple[Runtime, ScriptedActor]:
    runtime = Runtime(_config(method), policy, tmp_path / method)
    actor = ScriptedActor(runtime)
    runtime.actor = actor
    return runtime, actor


def test_presets() -> None:
    assert set(METHODS) == {"frozen", "memory", "sft", "grpo", "lifelong"}
    frozen, grpo, life = (_config(m) for m in ("frozen", "grpo", "lifelong"))
    assert frozen.update_rule == "none" and not frozen.guard.enabled
    assert grpo.rehearsal == 0.0 and not grpo.guard.enabled and not grpo.consolidate
    assert life.guard.enabled and life.consolidate and life.grpo.anchor_coef > 0  # rehearsal: on demand
    with pytest.raises(ConfigError, match="unknown method"):
        RunConfig.for_method("magic", stream={})


def test_stuck_items_are_retried_with_their_lesson_and_distilled(tiny_policy: Policy, tmp_path: Path) -> None:
    runtime, actor = _runtime("lifelong", tiny_policy, tmp_path)
    runtime.run()
    lessons = runtime.memory.items()
    assert len(lessons) == 4 and all(i.kind == "lesson" and i.wins == 1 for i in lessons)  # 2 steps x 2 stuck items
    failed = {e.id for e in runtime.store.episodes(split="train")}
    assert all(i.provenance[0] in failed for i in lessons)
    retries = runtime.store.episodes(split="retry")
    assert len(retries) == 4 * runtime.config.retries
    assert all(r.turns[0].prompt_ids != runtime.policy.start(r.turns[0].observation) for r in retries)
    assert any(c.startswith("Note: Earlier") for c in actor.contexts)
    updates = [r for r in _records(runtime) if r["type"] == "update"]
    assert all(u["memory/retry_solved"] == 2 and u["distill/kl"] >= 0 for u in updates)
    assert updates[1]["memory/replayed"] == 2  # the first step's lessons are replayed in the second
    assert tiny_policy.version == 2  # GRPO had no reward spread; the two distillation updates moved the weights


def test_consolidation_distils_helpful_lessons_and_prunes_what_the_weights_know(
    tiny_policy: Policy, tmp_path: Path
) -> None:
    runtime, _ = _runtime("lifelong", tiny_policy, tmp_path)
    runtime.run()
    version = tiny_policy.version
    report = consolidate(runtime, rounds=2, batch=2)
    assert report.lessons == 4 and report.updates == 4 and tiny_policy.version == version + 4
    # the tiny model cannot add, so nothing is reproduced by the weights and nothing is pruned
    assert report.pruned == 0 and len(runtime.memory.items()) == 4


def test_memory_method_recalls_but_never_learns(tiny_policy: Policy, tmp_path: Path) -> None:
    runtime, actor = _runtime("memory", tiny_policy, tmp_path)
    runtime.run()
    assert tiny_policy.version == 0
    assert runtime.memory.items()  # lessons from the failures
    assert any(c for c in actor.contexts)  # recalled into later contexts (similar questions)


def test_frozen_and_grpo_keep_no_memory(tiny_policy: Policy, tmp_path: Path) -> None:
    for method in ("frozen", "grpo"):
        runtime, actor = _runtime(method, tiny_policy, tmp_path)
        runtime.run()
        assert runtime.memory.items() == [] and not any(actor.contexts)
        assert not runtime.store.episodes(split="retry")


def _records(runtime: Runtime) -> list[dict]:
    import json

    return [json.loads(line) for line in (runtime.run_dir / "metrics.jsonl").read_text().splitlines()]


@dataclass(frozen=True)
class Leaks:
    found: int  # (expected answer, text) pairs where the text contains the answer
    lessons: int  # memory items
    notes: int  # lessons with the agent's own note (reflection)
    retry_prompts: int
    teachers: int  # distillation teachers' contexts


def _answer_leaks(method: str, policy: Policy, tmp_path: Path, also: Sequence[str] = (), **settings: object) -> Leaks:
    """Run `method` on a stream whose answers (reversed words) cannot occur in a question, and look
    for any expected answer in everything learnt from failure: memory items, retry prompts and the
    teachers' contexts of every distillation."""
    stream = Stream("t", (Stage(Task.of("reverse", max_length=5), 16),), probe_size=2)
    config = RunConfig.for_method(
        method, stream=stream.to_dict(), prompts_per_step=2, eval_every=0, answer_tokens=3,
        grpo=GRPOConfig(group_size=4), **settings,
    )  # fmt: skip
    runtime = Runtime(config, policy, tmp_path / method)
    actor = ScriptedActor(runtime)
    runtime.actor = actor
    teachers: list[str] = []
    distil = runtime.core.distil

    def recording_distil(step: int, lessons: Sequence[Lesson], **kwargs: Any) -> Any:
        teachers.extend(policy.tokenizer.decode(lesson.teacher_prompt + lesson.student_prompt) for lesson in lessons)
        return distil(step, lessons, **kwargs)

    runtime.core.distil = recording_distil  # type: ignore[method-assign]
    runtime.run()
    answers = set()
    for ep in runtime.store.episodes():
        answers.add(str(ep.info["answer"]))
        answers.update(str(a) for a in ep.info.get("solution", ()))
    answers = {a for a in answers if len(a) >= 4}  # a shorter one could occur in a garbled attempt by chance
    assert answers
    lessons = [i.text for i in runtime.memory.items()]
    prompts = [c for c in actor.contexts if c]
    found = sum(a in t for a in answers for t in [*lessons, *prompts, *teachers, *also])
    return Leaks(found, len(lessons), sum("My note on it:" in t for t in lessons), len(prompts), len(teachers))


@pytest.mark.parametrize("method", ["lifelong", "memory"])
def test_nothing_learnt_from_failure_sees_the_answer(method: str, tiny_policy: Policy, tmp_path: Path) -> None:
    """Issue 22: by default no lesson, retry prompt or distillation teacher contains the expected
    answer of a task that does not declare showing it; the answer-key ablation's do."""
    leaks = _answer_leaks(method, tiny_policy, tmp_path)
    assert leaks.lessons and leaks.retry_prompts  # the memory method recalls lessons into later prompts
    if method == "lifelong":
        assert leaks.teachers  # retries succeeded and were distilled
    assert leaks.found == 0
    assert _answer_leaks(method, tiny_policy, tmp_path / "key", lessons_with_answer=True).found > 0


def test_reflection_puts_the_agents_own_note_in_the_lesson(
    tiny_policy: Policy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note is the policy's own plain-chat reply to its failed attempt (the tiny model's replies
    are empty, so they are replaced by a fixed one here); its prompt holds the attempt, not the answer."""
    asked: list[str] = []
    chat = tiny_policy.chat

    def noting_chat(contexts: Sequence[Sequence[int]], *args: Any, **kwargs: Any) -> list[Completion]:
        asked.extend(tiny_policy.tokenizer.decode(c) for c in contexts)
        return [replace(c, answer="Check the letters one by one.") for c in chat(contexts, *args, **kwargs)]

    monkeypatch.setattr(tiny_policy, "chat", noting_chat)
    leaks = _answer_leaks("lifelong", tiny_policy, tmp_path, reflection=True, also=asked)
    assert leaks.notes == leaks.lessons > 0 and len(asked) == leaks.lessons
    assert all("was wrong" in a for a in asked) and leaks.found == 0


@pytest.mark.parametrize("explore_on", [False, True])
def test_exploration_gives_all_failed_groups_a_signal(explore_on: bool, tiny_policy: Policy, tmp_path: Path) -> None:
    """Every first attempt fails: without exploration no group has a reward spread and no update
    is applied; with it, each group gets hotter extra attempts (here they succeed), stored and
    counted, and the update learns from them."""
    config = RunConfig.for_method(
        "grpo", stream=Stream("t", (Stage(Task.of("add", max_value=3), 16),), probe_size=2).to_dict(),
        prompts_per_step=2, eval_every=0, answer_tokens=3, grpo=GRPOConfig(group_size=4),
        exploration=ExplorationConfig(enabled=explore_on, samples=2, temperature=1.5),
    )  # fmt: skip
    runtime = Runtime(config, tiny_policy, tmp_path / "run")
    actor = ScriptedActor(runtime, succeeds=("explore",))
    runtime.actor = actor
    summary = runtime.run()
    updates = [r for r in _records(runtime) if r["type"] == "update"]
    explored = runtime.store.episodes(split="explore")
    if not explore_on:
        assert not explored and not any(u["applied"] for u in updates) and summary.episodes == 16
        return
    assert len(explored) == 2 * 2 * 2  # steps x groups x samples
    assert actor.temperatures["explore"] == {1.5} and actor.temperatures["train"] == {config.grpo.temperature}
    assert all(u["applied"] and u["explore/groups"] == 2 == u["explore/solved_groups"] for u in updates)
    assert summary.episodes == 16 + 8  # every attempt counted
    assert {e.group for e in explored} == {e.group for e in runtime.store.episodes(split="train")}


def test_a_stage_can_count_every_sampled_episode_against_its_budget(tiny_policy: Policy, tmp_path: Path) -> None:
    """count_every_sample: exploration's attempts spend the stage's episodes too, so the stage
    takes fewer updates, and its end is still evaluated."""
    config = RunConfig.for_method(
        "grpo", stream=Stream("t", (Stage(Task.of("add", max_value=3), 32),), probe_size=2).to_dict(),
        prompts_per_step=2, eval_every=0, answer_tokens=3, grpo=GRPOConfig(group_size=4),
        exploration=ExplorationConfig(enabled=True, samples=2), count_every_sample=True,
    )  # fmt: skip
    runtime = Runtime(config, tiny_policy, tmp_path / "run")
    runtime.actor = ScriptedActor(runtime, succeeds=("explore",))
    summary = runtime.run()
    records = _records(runtime)
    assert [r["step"] for r in records if r["type"] == "update"] == [1, 2, 3]  # 12 a step: 36 >= 32
    assert [r["step"] for r in records if r["type"] == "skip"] == [4]
    assert [r["step"] for r in records if r["type"] == "eval"] == [0, 4]
    assert summary.episodes == 36 and runtime.state.sampled == {"0": 36}
