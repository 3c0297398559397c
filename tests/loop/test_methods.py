"""The methods of the comparison, and the failure path of `lifelong`, on the tiny model.

A scripted actor decides which episodes succeed (the tiny model cannot solve anything), while the
completions are the tiny policy's own, so memory, retries and distillation run for real.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from lifelong.errors import ConfigError
from lifelong.learn.grpo import GRPOConfig
from lifelong.loop.actor import Job, play
from lifelong.loop.consolidate import consolidate
from lifelong.loop.runtime import METHODS, RunConfig, Runtime
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.streams.stream import Stage, Stream, Task
from lifelong.types import Episode


class ScriptedActor:
    """Plays with the real policy; a retry (lesson in context) succeeds, a first attempt fails."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.contexts: list[str] = []

    def play(self, jobs: Sequence[Job], gen: GenerationConfig) -> list[Episode]:
        self.contexts += [j.context for j in jobs]
        episodes = play(self.runtime.policy, jobs, self.runtime.make_env, gen)
        return [
            Episode(e.id, e.env, e.seed, e.turns, float(e.split == "retry"), e.split == "retry", e.info,
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
