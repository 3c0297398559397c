"""The slow path ("sleep"): distil what memory holds into the adapters, then prune what stuck.

Run when the agent is idle (`lifelong consolidate RUN_DIR`). Every lesson that once helped (a retry
with it in context succeeded) is distilled for a few rounds: teacher = the policy with the lesson in
context, student = the same policy without it. Each update passes the guard's cheap checks; a
rejected one is undone. Afterwards each such lesson is tested: if the weights alone now answer
its question correctly, the item is forgotten (memory pruned, with the reason in the edit log);
otherwise it stays, and the agent keeps using it in context.
"""

from __future__ import annotations

from dataclasses import dataclass

from lifelong.guard.health import AdapterSnapshot
from lifelong.loop.runtime import Runtime
from lifelong.model.policy import GenerationConfig


@dataclass(frozen=True)
class ConsolidationReport:
    lessons: int  # lessons distilled
    updates: int
    rejected: int  # updates undone by the guard
    pruned: int  # items the weights now reproduce, forgotten from memory
    kept: int


def consolidate(runtime: Runtime, rounds: int = 3, batch: int = 8) -> ConsolidationReport:
    memory, policy, guard = runtime.memory, runtime.policy, runtime.guard
    helped = [i for i in memory.items() if i.kind == "lesson" and i.wins > 0]
    updates = rejected = 0
    for _ in range(rounds):
        for start in range(0, len(helped), batch):
            lessons = [runtime.lesson_of(item) for item in helped[start : start + batch]]
            before = AdapterSnapshot(policy)
            guard.before_update(policy)
            report = runtime.distiller.update(lessons, runtime.generator)
            verdict = guard.after_update(-1, report, policy, kind="distill")
            updates += int(report.applied)
            if not verdict.keep:  # undo just this update; nothing else changed since `before`
                rejected += 1
                before.restore(policy)
    pruned = 0
    greedy = GenerationConfig(thinking_tokens=0, answer_tokens=runtime.config.answer_tokens, temperature=0.0)
    for item in helped:
        source = runtime.store.episode(item.provenance[0]) if item.provenance else None
        if source is None:
            continue
        env = runtime.make_env(source.env)
        observation, _ = env.reset(seed=source.seed)
        answer = policy.respond([policy.start(observation)], greedy)[0].answer
        if env.step(answer).reward >= env.success_threshold:
            memory.forget(item.id, "consolidated: the weights answer it without the lesson")
            pruned += 1
    return ConsolidationReport(len(helped), updates, rejected, pruned, len(helped) - pruned)
