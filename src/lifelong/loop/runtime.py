"""The one-mode runtime: act -> score -> store -> learn -> act again with the updated adapters.

There is no training phase and no serving phase. Each step the actor plays a batch of episodes with
the live policy, the episodes are committed to the experience store, the learning core turns them
into one guarded update of the adapters (loop/learning.py), and the next step acts with those
adapters. Held-out probes are played greedily before the run, at stage ends and every `eval_every`
steps (loop/evaluation.py); they are stored but never learned from, and at those points the guard's
thorough gate decides whether the adapters are kept or rolled back.

The other jobs live beside this loop: what each step plays (loop/schedule.py), the general-ability
anchor (loop/anchors.py), retries with a lesson and their distillation (loop/consolidate.py), and
the reasoning monitor on the episodes learned from (guard/monitor.py: flags inform people, never a reward).

Resumption: after every step the adapters, optimizer and loop position are checkpointed
atomically. A resumed run restores the newest checkpoint and, if the crash came after a step's
episodes were stored but before its update was checkpointed, learns from those stored episodes
instead of sampling new ones, so nothing the agent experienced is lost.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from lifelong.envs.base import Env
from lifelong.guard.checkpoints import CheckpointRing
from lifelong.guard.detectors import Rescored
from lifelong.guard.gate import Guard, Verdict
from lifelong.guard.monitor import Monitor, TextMonitor, append_flags, flag_episodes
from lifelong.learn.distill import SelfDistiller
from lifelong.learn.grpo import GRPOLearner
from lifelong.learn.learner import FrozenLearner, Learner
from lifelong.learn.sft import SFTLearner
from lifelong.loop.actor import Actor, Job, LocalActor
from lifelong.loop.anchors import AnchorPool
from lifelong.loop.config import METHODS, UPDATE_RULES, Method, RunConfig, UpdateRule
from lifelong.loop.consolidate import remember, retry_and_distil
from lifelong.loop.curriculum import Curriculum
from lifelong.loop.evaluation import Evaluation
from lifelong.loop.explore import SPLIT as EXPLORE
from lifelong.loop.explore import exploration_metrics, explore
from lifelong.loop.learning import LearningCore, MetricsLog
from lifelong.loop.schedule import Schedule, Slot
from lifelong.loop.state import NoProgress, Progress, RunState, RunSummary
from lifelong.loop.world import WorldJob, WorldStep
from lifelong.memory.book import MemoryBook, notes
from lifelong.memory.store import ExperienceStore
from lifelong.model.policy import Policy
from lifelong.streams.stream import ProbeSet, Stream, Task
from lifelong.timing import Mark, part
from lifelong.types import Episode, Flag


def make_learner(config: RunConfig, policy: Policy, refuse_nonfinite: bool) -> Learner:
    """The learner of the config's update rule."""
    if config.update_rule is UpdateRule.SFT:
        return SFTLearner(policy, config.sft, refuse_nonfinite)
    if config.update_rule is UpdateRule.GRPO:
        return GRPOLearner(policy, config.grpo, refuse_nonfinite)
    return FrozenLearner()


def parts_record(step: int, started: Mark) -> dict[str, Any]:
    """Where a step's time went since `started`, per part (lifelong/timing.py) with `other` for
    what no part covers: the record the loop logs after each step's update, evaluation and
    checkpoint. Parts timed in another thread (an actor sampling ahead) can sum past the step's
    wall clock."""
    seconds, parts = started.seconds(), started.parts()
    rest = round(max(seconds - sum(parts.values()), 0.0), 4)
    timed = {k: round(v, 4) for k, v in sorted(parts.items())}
    return {"type": "parts", "step": step, "time/step_s": seconds, "time/parts": timed | {"other": rest}}


class Runtime:
    """A run of a task stream: the loop (`run`) around the learning core (`core`), the schedule, the
    probes (`evaluation`), the anchor pool, the experience store and memory, and the actor."""

    def __init__(
        self,
        config: RunConfig,
        policy: Policy,
        run_dir: Path,
        progress: Progress | None = None,
        actor: Actor | None = None,
        monitor: Monitor | None = None,
    ) -> None:
        self.config = config
        self.stream = Stream.from_dict(config.stream)
        self.policy = policy
        self.run_dir = run_dir
        self.run_id = run_dir.name
        self.progress = progress or NoProgress()
        self.store = ExperienceStore(config.store or run_dir / "experience.sqlite")
        self.memory = MemoryBook(self.store, config.memory)
        recall = self._recall if config.memory_in_context else None
        self.evaluation = Evaluation(config, self.stream, policy, self.make_env, recall)
        self.schedule = Schedule(config, self.stream, self.evaluation.probes)
        self.curriculum = (
            Curriculum(config.curriculum, self.evaluation.probes, self.stream.tasks)
            if config.curriculum.enabled
            else None
        )
        # Every task a job may name: the stream's, and the easier versions a curriculum trains on.
        self._tasks = {**self.evaluation.tasks, **(self.curriculum.versions() if self.curriculum else {})}
        general = [self.evaluation.probes[t] for t in self.stream.general]
        self.anchors = AnchorPool(
            policy, general, config.anchor_items, config.anchor_per_step, config.seed, config.generation(0.0),
            active=config.anchored,
        )  # fmt: skip
        self.generator = torch.Generator().manual_seed(config.seed)
        self.actor: Actor = actor or LocalActor(policy, self.make_env, self.generator)
        self.monitor: Monitor = monitor or TextMonitor()
        guard = Guard(config.guard, run_dir, self.evaluation.drift_prompts, seed=config.seed)
        learner = make_learner(config, policy, refuse_nonfinite=guard.enabled)
        optimizer = learner.optimizer
        distiller = SelfDistiller(policy, optimizer, config.distill, self.generator) if optimizer else None
        # The last good adapters: consolidation's format anchor, and what the guard re-measures a
        # suspect drop against.
        keep_good = config.consolidate or (guard.enabled and config.guard.confirm_items > 0)
        ring = CheckpointRing(run_dir / "checkpoints", keep=config.checkpoints_kept)
        log = MetricsLog(run_dir / "metrics.jsonl")
        self.core = LearningCore(policy, learner, guard, ring, distiller, keep_good, log)
        world = config.world
        self.world = WorldJob(world, policy, config.model, run_dir, config.seed) if world.enabled else None
        self.state = RunState()
        self._clock = time.time()

    # The core's parts, for reading (tests, benchmarks, progress displays).
    @property
    def guard(self) -> Guard:
        return self.core.guard

    @property
    def learner(self) -> Learner:
        return self.core.learner

    @property
    def ring(self) -> CheckpointRing:
        return self.core.ring

    @property
    def probes(self) -> dict[Task, ProbeSet]:
        return self.evaluation.probes

    def make_env(self, label: str) -> Env:
        """A fresh environment for a task label used in this run's jobs."""
        return self._tasks[label].make()

    def _recall(self, task: Task, seed: int) -> str:
        """Lessons and examples from memory about this item, as context for acting on it."""
        return notes(self.memory.retrieve(task.label, task.make().item_key(seed)))

    def jobs_for(self, slot: Slot) -> list[Job]:
        """The episodes a step plays (the schedule's items, rehearsing what the guard sees slip)."""
        recall = self._recall if self.config.memory_in_context else None
        version = self.curriculum.version if self.curriculum is not None else None
        return self.schedule.jobs_for(slot, self.guard.slipping(), recall, version)

    def _explorable(self, episodes: list[Episode]) -> list[Episode]:
        """The episodes whose failed groups exploration may retry: with a curriculum that goes
        first, those of tasks at their easiest version."""
        if self.curriculum is None or not self.config.exploration.after_curriculum:
            return episodes
        return [e for e in episodes if self.curriculum.easiest(e.env)]

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self, resume: bool = False, stop_after: int | None = None) -> RunSummary:
        """Run the stream to its end (or `stop_after` updates); resume from the newest checkpoint."""
        self._clock = time.time()
        done_steps = self.restore() if resume else self._start()
        self.progress.start(len(self.schedule) * self.config.episodes_per_step, self.state.episodes)
        if done_steps == 0 and not self.state.before:
            self.progress.note("evaluating the untrained model on held-out probes")
            self.state.before = self.evaluate(step=0)
            self.core.gate(0, self.state.before, guarded=[])
            self._mark_good(self.state.before)
            self.checkpoint(0, good=True)
        for n, slot in enumerate(self.schedule[done_steps:]):
            if stop_after is not None and n >= stop_after:
                break
            started = Mark.now()
            if self._budget_spent(slot):  # nothing to play: the stage-end evaluation below still runs
                verdict = Verdict(True)
                self.core.log({"type": "skip", "step": slot.step, "reason": "the stage's episodes are spent"})
            else:
                verdict = self._step(slot)
            gated = False
            if self.schedule.evaluates(slot):
                self.progress.note(f"step {slot.step}: evaluating probes")
                scores = self.evaluate(step=slot.step)
                if verdict.keep:  # the thorough gate piggybacks on the evaluation: no extra probes
                    verdict, gated = self._gate(slot, scores), True
                if verdict.keep and gated:
                    self._mark_good(scores)
            if not verdict.keep and self.guard.enabled:
                to_step = self.core.rollback(slot.step, verdict)
                self.progress.note(
                    f"step {slot.step}: update rejected ({verdict.reason}); rolled back to step {to_step}"
                )
                if gated or self.schedule.last_of_stage(slot):  # the recorded scores must be the kept weights'
                    self.evaluate(step=slot.step)
            # One checkpoint per step, after its evaluation: a crash anywhere in the step redoes
            # it on resume from the stored episodes.
            self.checkpoint(slot.step, good=gated and verdict.keep)
            self.core.log(parts_record(slot.step, started))
        return self.summary()

    def _budget_spent(self, slot: Slot) -> bool:
        """With `count_every_sample`: this slot's stage has sampled all its episodes already."""
        spent = self.state.sampled.get(str(slot.stage), 0)
        return self.config.count_every_sample and spent >= self.stream.stages[slot.stage].episodes

    def _step(self, slot: Slot) -> Verdict:
        """Act, store, learn (screened and checked by the guard), consolidate: one update."""
        t0 = time.time()
        with part("schedule"):
            jobs = self.jobs_for(slot)
        sampling = self.config.generation(self.config.grpo.temperature)
        stored = self.store.episodes(run_id=self.run_id, step=slot.step, split="train")
        if len(stored) == len(jobs):  # the crash came after storing, before the update: reuse
            episodes = stored
            explored = self.store.episodes(run_id=self.run_id, step=slot.step, split=EXPLORE)
            self.core.log({"type": "resume", "step": slot.step, "reused_episodes": len(stored) + len(explored)})
        else:
            episodes = self.actor.play(jobs, sampling)
            explored = []
            if self.config.exploration.enabled:  # before storing: a resumed step finds both or neither
                with part("explore"):
                    contexts = {j.group: j.context for j in jobs}
                    explored = explore(
                        self.actor, self._explorable(episodes), self.config.exploration, sampling, contexts
                    )
            with part("store"):
                self.store.add(episodes + explored, run_id=self.run_id, step=slot.step, model=self.policy.name)
            with part("monitor"):
                self.watch(slot.step, episodes + explored)
        t_act = time.time() - t0
        if slot.step < len(self.schedule):  # an actor that samples ahead does so while this step learns
            with part("schedule"):
                ahead = self.jobs_for(self.schedule[slot.step])
            self.actor.prefetch(ahead, sampling)
        if self.config.write_memory and self.config.memory_in_context:
            with part("memory"):
                remember(self, episodes)
        # Only the GRPO update has an anchor term; the pool costs a greedy pass to build.
        with part("anchor_pool"):
            anchors = self.anchors.for_step(slot.step) if self.config.update_rule is UpdateRule.GRPO else []
        learned = episodes + explored
        world = WorldStep()
        if self.world is not None:  # learns how the games respond; may imagine more episodes
            with part("world"):
                world = self.world.step(episodes, sampling, self.generator)
            if world.imagined:
                with part("store"):
                    self.store.add(world.imagined, run_id=self.run_id, step=slot.step, model=self.policy.name)
        result = self.core.learn(slot.step, learned + list(world.imagined), anchors, world.auxiliary)
        verdict, report = result.verdict, result.report
        consolidation: dict[str, float] = {}
        if verdict.keep and self.config.consolidate:
            with part("retries"):
                consolidation, verdict = retry_and_distil(self, slot.step, learned)
        # The curriculum reads the step's own attempts: exploration's hot samples do not make a task easy.
        signal = self.curriculum.observe(episodes) if self.curriculum is not None else {}
        if self.config.exploration.enabled:
            signal |= exploration_metrics(explored)
        self.state.episodes += len(learned)
        stage_key = str(slot.stage)
        retried = int(consolidation.get("memory/retried", 0))
        self.state.sampled[stage_key] = self.state.sampled.get(stage_key, 0) + len(learned) + retried
        stage = self.stream.stages[slot.stage].task.label
        self.core.log(
            {
                "type": "update",
                "step": slot.step,
                "stage": stage,
                "episodes": self.state.episodes,
                "applied": report.applied,
                "reason": report.reason,
                "adapter_version": self.core.version,
                "time/act_s": t_act,
                "time/learn_s": time.time() - t0 - t_act,
                "success/train": sum(e.success for e in episodes) / len(episodes),
                "guard/keep": verdict.keep,
                "guard/findings": [f.detector for f in verdict.findings],
                "guard/screened_out": result.screened_out,
                **report.metrics,
                **consolidation,
                **signal,
                **world.metrics,
            }
        )
        self.progress.advance(len(episodes), float(report.metrics.get("reward/mean", 0.0)), stage)
        return verdict

    def watch(self, step: int, episodes: list[Episode]) -> list[Flag]:
        """The reasoning monitor on a step's stored training episodes, before they are learned from:
        its flags go to the store and `<run_dir>/flags.jsonl` (with the step and task, for the
        report). They are for people; nothing reads them back into a reward or an update. A
        resumed step that reuses its stored episodes is not flagged again."""
        flags = flag_episodes(self.monitor, episodes)
        if flags:
            self.store.add_flags(flags)
            task = {e.id: e.env for e in episodes}
            append_flags(self.run_dir / "flags.jsonl", flags, lambda flag: {"step": step, "task": task[flag.source]})
        return flags

    def _gate(self, slot: Slot, scores: dict[str, float]) -> Verdict:
        """The guard's thorough checks on the scores of this slot's evaluation."""
        plan, items = self.schedule, self.stream.probe_size
        held = plan.general + (plan.upcoming(slot) if self.config.guard.hold_upcoming else [])
        return self.core.gate(slot.step, scores, plan.guarded(slot), held, plan.trained(slot), self.rescore, items)

    def _mark_good(self, scores: dict[str, float]) -> None:
        self.core.mark_good(scores)
        self.evaluation.forget("last_good")

    # ---- evaluation --------------------------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy success on every task's held-out probe set; probe episodes are stored, not learned."""
        with part("evaluation"):
            episodes, scores = self.evaluation.play(self.actor)
            self.store.add(episodes, run_id=self.run_id, step=step, model=self.policy.name)
        record = {"type": "eval", "step": step, "episodes": self.state.episodes, "scores": scores}
        self.record_eval({**record, "drift/kl_base": self.evaluation.kl_base()})
        return scores

    def rescore(self, task: str, against: str) -> Rescored:
        """Greedy success on `task`'s fresh held-out items now and by `against` ("last_good" or
        "pretrained"): the guard asks for this when a probe drop is over budget."""
        return self.evaluation.rescore(task, against, self.core.good_adapters)

    def record_eval(self, record: dict[str, Any]) -> None:
        """Append an evaluation record to the run's state and metrics log (the accuracy matrix is read
        from them). `evaluate` makes them; a runner that trains elsewhere may repeat one for steps
        whose weights it left unchanged (evaluate/trl_runner.py)."""
        self.state.evals.append(record)
        self.core.log(record)

    def record_episodes(self, n: int) -> int:
        """Count `n` training episodes learned from outside `run` (an external trainer); returns the total."""
        self.state.episodes += n
        return self.state.episodes

    # ---- persistence -------------------------------------------------------------------------------
    def _start(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=1))
        return 0

    def checkpoint(self, step: int, good: bool) -> None:
        now = time.time()
        self.state.seconds += now - self._clock
        self._clock = now
        if self.curriculum is not None:
            self.state.curriculum = self.curriculum.state()
        self.core.checkpoint(step, good, {**self.state.to_dict(), "rng": self.generator.get_state().tolist()})
        if self.world is not None:
            self.world.save()

    def restore(self) -> int:
        """Load the newest checkpoint (adapters, optimizer, loop and guard state); returns its step."""
        restored = self.core.restore()
        if restored is None:
            return 0
        self.state = RunState.from_dict(restored.state)
        if self.curriculum is not None:
            self.curriculum.restore(self.state.curriculum)
        self.generator.set_state(torch.tensor(restored.state["rng"], dtype=torch.uint8))
        if self.world is not None:
            self.world.restore(self.store.episodes(run_id=self.run_id, split="train"))
        self.core.log({"type": "resume", "step": restored.step, "version": self.core.version})
        return restored.step

    def summary(self) -> RunSummary:
        after = self.state.evals[-1]["scores"] if self.state.evals else {}
        return RunSummary(
            model=self.policy.name,
            tasks=[t.label for t in self.stream.tasks],
            episodes=int(self.state.episodes),
            before=dict(self.state.before),
            after=dict(after),
            minutes=round(self.state.seconds / 60, 2),
        )


__all__ = [
    "METHODS",
    "UPDATE_RULES",
    "Method",
    "NoProgress",
    "Progress",
    "RunConfig",
    "RunState",
    "RunSummary",
    "Runtime",
    "UpdateRule",
    "make_learner",
]
