"""The unstuck rate: after failing an item once, does the agent solve it next time, with memory off?

Held-out items (never seen in training) are met once, greedily. For those failed at this first
encounter, each method does what it does with a failure and its correction (the environment's
ground truth, as a teacher would give it):

  frozen    nothing
  memory    writes a lesson into memory (context only; weights never change)
  lifelong  writes the lesson, retries with it in context, distils successful retries into the
            weights (teacher = with the lesson, student = without; replay of earlier lessons), and
            runs one consolidation ("sleep") pass over all lessons that helped

All failures are processed before any item is met again, so later lessons can interfere with
earlier ones. At the next encounter memory is switched OFF: only the weights answer. The unstuck
rate is the fraction of first-encounter failures solved then. For context, the memory method is
also scored with its memory ON, and lifelong's weights are checked on other held-out items
(general drift), so unstuck items are not bought with damage elsewhere.

    python benchmarks/unstuck.py [--items 40] [--json]

With `--no-answer` it measures something else (issue 22): getting unstuck when no answer key is
given. Every method trains on a stream of hard tasks (`benchmarks/streams/hard.yaml`, committed
with its target difficulties and budget before any lifelong run was measured on it) under the
same episode budget, every sampled episode counted (retries and exploration included), and is
scored on held-out items at each task's target difficulty at the end:

  frozen               no learning
  grpo                 plain GRPO
  grpo_curriculum      GRPO with the automatic curriculum alone
  lifelong_no_answer   lifelong with lessons that never hold the expected answer, plus the
                       curriculum, exploration of all-failed groups and reflection
  lifelong_answer      today's lifelong: lessons quote the expected answer
  (--ablation adds lifelong_no_answer without each of its three parts, and grpo_curriculum
  stepping one level at a time)

    python benchmarks/unstuck.py --no-answer [--seeds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lifelong.cli import _quiet_libraries
from lifelong.learn.distill import DistillConfig, Lesson, SelfDistiller
from lifelong.loop.actor import Job, play
from lifelong.loop.config import RunConfig
from lifelong.loop.curriculum import CurriculumConfig
from lifelong.loop.explore import ExplorationConfig
from lifelong.loop.runtime import Runtime
from lifelong.memory.book import MemoryBook, notes
from lifelong.memory.store import ExperienceStore
from lifelong.model.loading import load_model
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.streams.defaults import get_stream
from lifelong.streams.stream import PROBE_SEED_BASE, Task
from lifelong.types import Episode, MemoryItem

TASKS = (Task.of("add", max_value=20), Task.of("larger"), Task.of("letter", position="last"))
GREEDY = GenerationConfig(thinking_tokens=0, answer_tokens=12, temperature=0.0)
SAMPLED = GenerationConfig(thinking_tokens=0, answer_tokens=12, temperature=1.0)


def items(n: int, offset: int) -> list[Job]:
    """n held-out items per task (probe-range seeds, never used for training)."""
    return [Job(t.label, PROBE_SEED_BASE + offset + i, split="probe") for t in TASKS for i in range(n)]


def make_env(label: str):  # type: ignore[no-untyped-def]
    return {t.label: t for t in TASKS}[label].make()


def encounter(policy: Policy, jobs: Sequence[Job]) -> list[Episode]:
    return play(policy, jobs, make_env, GREEDY)


def success_rate(episodes: Sequence[Episode]) -> float:
    return sum(e.success for e in episodes) / max(len(episodes), 1)


def lesson_of(policy: Policy, item: MemoryItem, wins: Sequence[Episode] = ()) -> Lesson:
    student = tuple(policy.start(item.key))
    teacher = tuple(policy.start(f"{notes([item])}\n\n{item.key}"))
    return Lesson(student, wins[0].turns[0].prompt_ids if wins else teacher, tuple(w.turns[0].completion for w in wins))


def run_lifelong(
    policy: Policy, failures: list[Episode], book: MemoryBook, args: argparse.Namespace, gen: torch.Generator
) -> dict[str, float]:
    optimizer = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad], lr=args.lr)
    # The student's on-policy samples come from `gen`, the generator the retries are played with.
    distiller = SelfDistiller(policy, optimizer, DistillConfig(learning_rate=args.lr), generator=gen)
    helped: list[MemoryItem] = []
    retried = solved = 0
    rng = random.Random(0)
    for start in range(0, len(failures), args.batch):
        batch = failures[start : start + args.batch]
        lessons = {ep.id: book.add_lesson(ep, with_answer=True) for ep in batch}
        jobs = [
            Job(ep.env, ep.seed, group=ep.id, split="retry", context=notes([lessons[ep.id]]))
            for ep in batch
            for _ in range(args.retries)
        ]
        retries = play(policy, jobs, make_env, SAMPLED, gen)
        new: list[Lesson] = []
        for ep in batch:
            wins = [r for r in retries if r.group == ep.id and r.success]
            retried += 1
            book.record([lessons[ep.id]], won=bool(wins))
            if wins:
                solved += 1
                new.append(lesson_of(policy, lessons[ep.id], wins))
                helped.append(lessons[ep.id])
        if not new:
            continue
        for _ in range(args.updates):
            replay = [lesson_of(policy, i) for i in rng.sample(helped, min(args.replay, len(helped)))]
            distiller.update(new + replay)
    for _ in range(args.sleep_rounds):  # the slow path: one pass over everything that helped
        order = rng.sample(helped, len(helped))
        for start in range(0, len(order), args.batch):
            distiller.update([lesson_of(policy, i) for i in order[start : start + args.batch]])
    return {"retry_success": solved / max(retried, 1), "lessons_consolidated": float(len(helped))}


# ---- --no-answer: the hard stream ------------------------------------------------------------------
HARD_STREAM = Path(__file__).parent / "streams" / "hard.yaml"
UNSTUCK_PARTS = {
    "curriculum": {"curriculum": CurriculumConfig(enabled=True)},
    "exploration": {"exploration": ExplorationConfig(enabled=True)},
    "reflection": {"reflection": True},
}


def no_answer_methods(ablation: bool) -> dict[str, tuple[str, dict[str, Any]]]:
    """Name -> (preset, settings) of every method the --no-answer table compares."""
    every_part = {k: v for part in UNSTUCK_PARTS.values() for k, v in part.items()}
    methods: dict[str, tuple[str, dict[str, Any]]] = {
        "frozen": ("frozen", {}),
        "grpo": ("grpo", {}),
        "grpo_curriculum": ("grpo", UNSTUCK_PARTS["curriculum"]),
        "lifelong_no_answer": ("lifelong", every_part),
        "lifelong_answer": ("lifelong", {"lessons_with_answer": True}),
    }
    if ablation:
        for name, part in UNSTUCK_PARTS.items():
            methods[f"lifelong_no_answer-{name}"] = ("lifelong", {k: v for k, v in every_part.items() if k not in part})
        # the curriculum as it was until stop 26: one level down a step, not halfway down the rest
        methods["grpo_curriculum-one_level"] = ("grpo", {"curriculum": CurriculumConfig(enabled=True, halfway=False)})
    return methods


def retried_items_rate(policy: Policy, runtime: Runtime) -> float | None:
    """Greedy success, with the final weights and no lesson, on the items the run retried."""
    items = {(e.env, e.seed) for e in runtime.store.episodes(split="retry")}
    if not items:
        return None
    jobs = [Job(env, seed, split="probe") for env, seed in sorted(items)]
    return success_rate(play(policy, jobs, runtime.make_env, runtime.config.generation(0.0)))


def main_no_answer(args: argparse.Namespace) -> None:
    from lifelong.cli import ConsoleProgress

    stream = get_stream(str(args.stream))
    methods = no_answer_methods(args.ablation)
    if args.methods:
        methods = {k: v for k, v in methods.items() if k in args.methods.split(",")}
    out = Path(args.out or tempfile.mkdtemp(prefix="lifelong-unstuck-no-answer-"))
    tasks = [t.label for t in stream.tasks]
    success: dict[str, dict[str, list[float]]] = {m: {t: [] for t in tasks} for m in methods}
    sampled: dict[str, list[int]] = {m: [] for m in methods}
    retried: dict[str, list[float]] = {m: [] for m in methods}
    runs = [(seed, method) for seed in range(args.seeds) for method in methods]
    started = time.time()
    for n, (seed, method) in enumerate(runs):
        eta = (time.time() - started) / n * (len(runs) - n) if n else float("nan")
        print(f"run {n + 1}/{len(runs)}: seed {seed} {method} (all runs' eta {eta / 60:.0f} min)", file=sys.stderr)
        model, tok, name = load_model()  # every run from the same pretrained weights...
        torch.manual_seed(seed)  # ...and, per seed, the same adapter initialisation
        preset, settings = methods[method]
        # Probes only at stage ends (the table reads the last): evaluating every 5 steps took 88%
        # of a run's time here. lifelong's thorough gate then runs at stage ends too.
        config = RunConfig.for_method(
            preset, stream=stream.to_dict(), seed=seed, count_every_sample=True, eval_every=0, **settings
        )  # fmt: skip
        policy = Policy.for_config(model, tok, name, config)
        run_dir = out / f"seed{seed}" / method
        progress = ConsoleProgress()  # a bar with this run's episodes and ETA
        runtime = Runtime(config, policy, run_dir, progress)
        summary = runtime.run(resume=(run_dir / "config.json").is_file())
        progress.stop()
        for t in tasks:
            success[method][t].append(summary.after[t])
        sampled[method].append(sum(runtime.state.sampled.values()))
        rate = retried_items_rate(policy, runtime)
        if rate is not None:
            retried[method].append(rate)

    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    per_task = {t: {m: round(mean(success[m][t]), 4) for m in methods} for t in tasks}
    overall = {m: round(mean([mean(success[m][t]) for t in tasks]), 4) for m in methods}
    items = f"{args.seeds} seeds, {stream.probe_size} items a task"
    print(f"\nheld-out success at the target difficulty after the budget ({items}):")
    print(f"{'task':32s}" + "".join(f"{m[:20]:>21s}" for m in methods))
    for t in tasks:
        print(f"{t:32s}" + "".join(f"{100 * per_task[t][m]:20.1f}%" for m in methods))
    print(f"{'mean':32s}" + "".join(f"{100 * overall[m]:20.1f}%" for m in methods))
    if args.seeds > 1 and "grpo" in methods:
        for m in methods:
            if m in ("grpo", "frozen"):
                continue
            diffs = [
                mean([success[m][t][s] for t in tasks]) - mean([success["grpo"][t][s] for t in tasks])
                for s in range(args.seeds)
            ]
            se = (sum((d - mean(diffs)) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)) ** 0.5
            print(f"  {m} - grpo, paired over seeds: {100 * mean(diffs):+.1f} +- {100 * se:.1f} points")
    for m in methods:
        extra = f", retried items {100 * mean(retried[m]):.1f}%" if retried[m] else ""
        print(f"  {m}: {mean(sampled[m]):.0f} episodes sampled a run{extra}")
    print(f"(run folders in {out})")
    if args.json:
        print(json.dumps({"tasks": len(tasks), "seeds": args.seeds, "methods": overall, "per_task": per_task}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=40, help="held-out items per task")
    parser.add_argument("--retries", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="failures handled per update")
    parser.add_argument("--updates", type=int, default=2, help="distillation updates per batch")
    parser.add_argument("--replay", type=int, default=4)
    parser.add_argument("--sleep-rounds", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-answer", action="store_true", help="the hard stream without an answer key (issue 22)")
    parser.add_argument("--stream", default=str(HARD_STREAM), help="--no-answer: the stream file")
    parser.add_argument("--seeds", type=int, default=3, help="--no-answer: seeds per method")
    parser.add_argument("--methods", default="", help="--no-answer: a comma-separated subset of the methods")
    parser.add_argument("--ablation", action="store_true", help="--no-answer: also lifelong without each part")
    parser.add_argument("--out", default="", help="--no-answer: folder for the run folders (resumable)")
    args = parser.parse_args()
    _quiet_libraries()
    torch.set_num_threads(args.threads)
    if args.no_answer:
        main_no_answer(args)
        return
    t0 = time.time()
    model, tok, name = load_model()
    policy = Policy(model, tok, name=name)
    work = Path(tempfile.mkdtemp(prefix="lifelong-unstuck-"))
    jobs = items(args.items, 0)
    others = items(args.items // 2, 10_000)  # different held-out items, to check for damage

    first = encounter(policy, jobs)
    failures = [e for e in first if not e.success]
    base_others = success_rate(encounter(policy, others))
    print(f"{len(jobs)} items, {len(failures)} failed at first encounter ({time.time() - t0:.0f}s)", file=sys.stderr)
    failed_jobs = [Job(e.env, e.seed, split="probe") for e in failures]

    results: dict[str, float] = {}
    # frozen: the weights never change, so the next encounter is the first one again
    results["frozen"] = success_rate(encounter(policy, failed_jobs))

    book = MemoryBook(ExperienceStore(work / "memory.sqlite"))
    for ep in failures:
        book.add_lesson(ep, with_answer=True)
    results["memory_weights_only"] = success_rate(encounter(policy, failed_jobs))
    with_context = [
        Job(j.env, j.seed, split="probe", context=notes(book.retrieve(j.env, make_env(j.env).item_key(j.seed))))
        for j in failed_jobs
    ]
    memory_on = success_rate(encounter(policy, with_context))
    print(f"frozen and memory done ({time.time() - t0:.0f}s)", file=sys.stderr)

    life_book = MemoryBook(ExperienceStore(work / "lifelong.sqlite"))
    extra = run_lifelong(policy, failures, life_book, args, torch.Generator().manual_seed(0))
    results["lifelong"] = success_rate(encounter(policy, failed_jobs))
    life_others = success_rate(encounter(policy, others))
    minutes = (time.time() - t0) / 60

    print(f"\nunstuck rate over {len(failures)} items failed at first encounter (memory off at the next):")
    for key in ("frozen", "memory_weights_only", "lifelong"):
        print(f"  {key:22s} {100 * results[key]:5.1f}%")
    print(f"  (memory, with its memory on: {100 * memory_on:.1f}%)")
    print(f"  (lifelong retries with the lesson solved {100 * extra['retry_success']:.1f}%)")
    print(f"  other held-out items, lifelong weights: {100 * base_others:.1f}% -> {100 * life_others:.1f}%")
    print(f"({minutes:.1f} minutes)")
    if args.json:
        print(json.dumps({**{k: round(v, 4) for k, v in results.items()}, "items": len(failures)}))


if __name__ == "__main__":
    main()
