"""The failure path: memory written from episodes, retries with a lesson, and consolidation.

Fast path, inside the loop (`retry_and_distil`): items where every sample of a step failed get a
lesson in memory (the attempt, the reward and what the environment said; the expected answer only
where the task declares showing it; with `reflection`, the agent's own note on the failure) and are
retried with it in context; retries that succeed are distilled into the
weights through the learning core (teacher = with the lesson, student = without), mixed with replay
of lessons that helped before. The memory method instead only writes (`remember`): a lesson for a
failed item, an example for a solved one.

Slow path ("sleep", `consolidate`): run when the agent is idle (`lifelong consolidate RUN_DIR`).
Every lesson that once helped is distilled for a few rounds; each update passes the guard's cheap
checks and a rejected one is undone. Afterwards each such lesson is tested: if the weights alone now
answer its question correctly, the item is forgotten (memory pruned, with the reason in the edit
log); otherwise it stays, and the agent keeps using it in context.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lifelong.guard.gate import Verdict
from lifelong.loop.actor import Job
from lifelong.loop.explore import failed_groups
from lifelong.memory.book import MemoryBook, correction, notes
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.types import Episode, Lesson, MemoryItem

if TYPE_CHECKING:
    from lifelong.loop.runtime import Runtime


def lesson_of(policy: Policy, item: MemoryItem) -> Lesson:
    """A memory item as a distillation lesson: its question with and without the item in context."""
    student = tuple(policy.start(item.key))
    teacher = tuple(policy.start(f"{notes([item])}\n\n{item.key}"))
    return Lesson(student, teacher)


def helped_lessons(memory: MemoryBook) -> list[MemoryItem]:
    """Lessons that helped (a retry with them in context succeeded)."""
    return [i for i in memory.items() if i.kind == "lesson" and i.wins > 0]


def shows_answer(runtime: Runtime, env: str) -> bool:
    """Whether a lesson from a failure in `env` may quote its expected answer: the task declares
    it (`Env.shows_answer`), or the run is the answer-key ablation (`lessons_with_answer`)."""
    return runtime.config.lessons_with_answer or runtime.make_env(env).shows_answer


def remember(runtime: Runtime, episodes: Sequence[Episode]) -> None:
    """Memory method: a lesson for every failed item, an example for every solved one."""
    by_item: dict[tuple[str, int], list[Episode]] = {}
    for ep in episodes:
        by_item.setdefault((ep.env, ep.seed), []).append(ep)
    for eps in by_item.values():
        wins = [e for e in eps if e.success]
        if wins:
            runtime.memory.add_example(wins[0])
        else:
            runtime.memory.add_lesson(eps[0], shows_answer(runtime, eps[0].env))


# ---- fast path ------------------------------------------------------------------------------------
REFLECT = (
    'Question: "{question}"\nMy answer "{answer}" was wrong.{feedback}\n'
    "In one sentence, what should I do differently to answer it correctly?"
)


def reflect(policy: Policy, failed: Sequence[Episode], answer_tokens: int) -> list[str]:
    """The agent's own note on each failure (greedy, plain chat): what it tried and what it was
    told, never the expected answer, which it is not shown."""
    prompts = []
    for ep in failed:
        said = correction(ep, with_answer=False)  # what the environment and the reward said
        text = REFLECT.format(
            question=ep.turns[0].observation, answer=ep.turns[-1].completion.answer, feedback=f" {said}" if said else ""
        )
        prompts.append(policy.chat_start(text))
    greedy = GenerationConfig(answer_tokens=max(answer_tokens, 32), temperature=0.0, protocol=False)
    return [c.answer.strip() for c in policy.chat(prompts, greedy)]


def retry_and_distil(runtime: Runtime, step: int, episodes: Sequence[Episode]) -> tuple[dict[str, float], Verdict]:
    """Retry the step's stuck items with their lesson and distil the successes (module docstring).
    Returns the metrics for the step's record and the guard's verdict on the distillation update."""
    config, policy, memory = runtime.config, runtime.policy, runtime.memory
    stuck = [ep for ep in failed_groups(episodes) if ep.turns and runtime.make_env(ep.env).max_turns == 1]
    if not stuck:  # (single-turn lessons only)
        return {"memory/stuck": 0.0}, Verdict(True)
    reflections = reflect(policy, stuck, config.answer_tokens) if config.reflection else [""] * len(stuck)
    lessons = {
        ep.group: memory.add_lesson(ep, shows_answer(runtime, ep.env), note)
        for ep, note in zip(stuck, reflections, strict=True)
    }
    jobs = [
        Job(ep.env, ep.seed, group=f"{ep.group}:retry", split="retry", context=notes([lessons[ep.group]]))
        for ep in stuck
        for _ in range(config.retries)
    ]
    retries = runtime.actor.play(jobs, config.generation(1.0))
    runtime.store.add(retries, run_id=runtime.run_id, step=step, model=policy.name)
    new: list[Lesson] = []
    for ep in stuck:
        wins = [r for r in retries if r.group == f"{ep.group}:retry" and r.success]
        memory.record([lessons[ep.group]], won=bool(wins))
        if wins:
            student = tuple(policy.start(ep.turns[0].observation))
            new.append(Lesson(student, wins[0].turns[0].prompt_ids, tuple(w.turns[0].completion for w in wins)))
    metrics = {
        "memory/stuck": float(len(stuck)),
        "memory/retried": float(len(retries)),  # episodes played by the retries
        "memory/retry_solved": float(len(new)),
    }
    if not new:
        return metrics, Verdict(True)
    # Replay: lessons that helped before, so consolidating new items does not overwrite old ones.
    exclude = {lessons[g].id for g in lessons}
    helped = [i for i in helped_lessons(memory) if i.id not in exclude]
    rng = random.Random(f"{config.seed}:replay:{len(helped)}")
    replay = [lesson_of(policy, item) for item in rng.sample(helped, min(config.replay_lessons, len(helped)))]
    result = runtime.core.distil(step, new + replay, reference=runtime.core.good_adapters)
    return {**metrics, **result.report.metrics, "memory/replayed": float(len(replay))}, result.verdict


# ---- slow path ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConsolidationReport:
    lessons: int  # lessons distilled
    updates: int
    rejected: int  # updates undone by the guard
    pruned: int  # items the weights now reproduce, forgotten from memory
    kept: int


def consolidate(runtime: Runtime, rounds: int = 3, batch: int = 8) -> ConsolidationReport:
    """Distil every lesson that helped into the weights, then forget those the weights now know."""
    policy, memory = runtime.policy, runtime.memory
    helped = helped_lessons(memory)
    updates = rejected = 0
    for _ in range(rounds):
        for start in range(0, len(helped), batch):
            lessons = [lesson_of(policy, item) for item in helped[start : start + batch]]
            result = runtime.core.distil(-1, lessons, undo_rejected=True)
            updates += int(result.report.applied)
            rejected += int(result.undone)
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


__all__ = [
    "ConsolidationReport",
    "consolidate",
    "helped_lessons",
    "lesson_of",
    "reflect",
    "remember",
    "retry_and_distil",
    "shows_answer",
]
