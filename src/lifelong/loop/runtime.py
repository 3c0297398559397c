"""The one-mode runtime: act -> score -> store -> learn -> act again with the updated adapters.

There is no training phase and no serving phase. Each step the actor plays a batch of episodes with
the live policy, the episodes are committed to the experience store, the learner turns them into
one update of the adapters, and the next step acts with those adapters. Held-out probes are played
greedily before the run, at stage ends and every `eval_every` steps; they are stored but never
learned from.

Resumption: after every update the adapters, optimizer and loop position are checkpointed
atomically. A resumed run restores the newest checkpoint and, if the crash came after a step's
episodes were stored but before its update was checkpointed, learns from those stored episodes
instead of sampling new ones, so nothing the agent experienced is lost.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from lifelong.envs.base import Env
from lifelong.errors import ConfigError
from lifelong.guard.checkpoints import CheckpointRing
from lifelong.guard.detectors import Rescored
from lifelong.guard.gate import Guard, GuardConfig, Verdict
from lifelong.guard.health import AdapterSnapshot, ProbeDrift
from lifelong.learn.distill import DistillConfig, Lesson, SelfDistiller
from lifelong.learn.grpo import GRPOConfig, GRPOLearner, make_batch
from lifelong.learn.sft import SFTLearner, make_sft_batch
from lifelong.loop.actor import Actor, Job, LocalActor, play
from lifelong.memory.book import MemoryBook, MemoryConfig, notes
from lifelong.memory.store import ExperienceStore
from lifelong.model.policy import GenerationConfig, LoraSettings, Policy
from lifelong.streams.stream import ProbeSet, Stream, Task
from lifelong.types import Episode, MemoryItem, Sample, UpdateReport


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs besides the model weights. Defaults are the `make demo` run."""

    stream: dict[str, Any]  # Stream.to_dict()
    model: str | None = None  # None = the embedded default model
    store: str | None = None  # a postgresql:// URL; None = experience.sqlite in the run folder
    prompts_per_step: int = 4  # distinct items per update; each is sampled group_size times
    # On 2 CPU cores with the 135M default, thinking costs 3-8x per episode and measured no better on
    # the demo's first task (dev/LOG.md); GPU users raise it.
    reasoning_effort: str = "none"
    thinking_tokens: int | None = None
    answer_tokens: int = 12
    eval_every: int = 5  # steps between probe evaluations (0 = only at stage ends)
    # Fixed rehearsal: the share of the run's prompts drawn from earlier stages' tasks. Off by
    # default: a fixed share is a tax on every new stage (with 0.25 or 0.125 the default stream's
    # third task reached 62 at its stage end, without it 75; one seed, dev/LOG.md). Rehearsal on
    # demand stays on with the guard: a task whose probe score slips below its best
    # (`guard.slip_threshold`) gets a prompt every step until it recovers.
    rehearsal: float = 0.0
    # General-ability items (training items of the stream's `general` tasks, never its probes)
    # answered by the pretrained model, held in place by `grpo.anchor_coef` in every update. Few
    # anchored items protect only themselves (seen: 8 facts held, other facts still flipped), so the
    # pool covers many distinct items and each update takes its turn of them.
    anchor_items: int = 32  # distinct items per general task in the pool
    anchor_per_step: int = 16  # anchor items in each update, rotating through the pool
    seed: int = 0
    checkpoints_kept: int = 3
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    guard: GuardConfig = field(default_factory=GuardConfig)
    # What the agent does with its experience (see `for_method` for the named combinations).
    method: str = "lifelong"
    update_rule: str = "grpo"  # "grpo", "sft" or "none" (weights never change)
    memory_in_context: bool = False  # recall lessons and examples into every training context
    write_memory: bool = True  # keep lessons from failures (and, with memory in context, examples)
    consolidate: bool = True  # retry stuck items with their lesson; distil the successes into weights
    retries: int = 4  # samples of a retry with the lesson in context
    replay_lessons: int = 4  # earlier consolidated lessons mixed into each distillation update
    distill: DistillConfig = field(default_factory=DistillConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    def __post_init__(self) -> None:
        if self.update_rule not in UPDATE_RULES:
            raise ConfigError(f"unknown update_rule {self.update_rule!r}", f"use one of {', '.join(UPDATE_RULES)}")
        if self.consolidate and self.update_rule == "none":
            raise ConfigError("consolidate needs weights that learn", "set update_rule to grpo or sft")
        if self.prompts_per_step < 1:
            raise ConfigError("prompts_per_step must be >= 1", "the default is 4")
        if not 0.0 <= self.rehearsal < 1.0:
            raise ConfigError(f"rehearsal must be in [0, 1), got {self.rehearsal}", "0.25 rehearses 1 prompt in 4")
        if self.anchor_items < 0 or self.anchor_per_step < 0:
            raise ConfigError("anchor_items and anchor_per_step must be >= 0", "the defaults are 32 and 16")
        if self.eval_every < 0:
            raise ConfigError("eval_every must be >= 0", "use 0 to evaluate only at stage ends")
        self.generation(0.0)  # validates reasoning_effort / thinking_tokens early

    @property
    def episodes_per_step(self) -> int:
        return self.prompts_per_step * self.grpo.group_size

    def generation(self, temperature: float) -> GenerationConfig:
        return GenerationConfig(self.reasoning_effort, self.thinking_tokens, self.answer_tokens, temperature)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        d["grpo"] = GRPOConfig(**d.get("grpo", {}))
        d["lora"] = LoraSettings(**d.get("lora", {}))
        d["guard"] = GuardConfig(**d.get("guard", {}))
        d["distill"] = DistillConfig(**d.get("distill", {}))
        d["memory"] = MemoryConfig(**d.get("memory", {}))
        return cls(**d)

    @classmethod
    def for_method(cls, method: str, **settings: Any) -> RunConfig:
        """The named methods compared by `lifelong eval`, on otherwise identical settings:

        frozen    no learning at all
        memory    lessons and examples recalled into context; weights never change
        sft       fine-tune on its own successful episodes, stage after stage
        grpo      plain group-relative policy gradient: no guard, no rehearsal, no anchor, no memory
        lifelong  GRPO + general-ability anchor + guard + rehearsal of what slips + retry-with-lesson
                  consolidated by self-distillation
        """
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}", f"use one of {', '.join(METHODS)}")
        guard = settings.pop("guard", GuardConfig())
        grpo = settings.pop("grpo", GRPOConfig())
        plain = {
            "rehearsal": 0.0,
            "guard": replace(guard, enabled=False),
            "consolidate": False,
            "grpo": replace(grpo, anchor_coef=0.0),
        }
        presets: dict[str, dict[str, Any]] = {
            "frozen": {**plain, "update_rule": "none", "write_memory": False},
            "memory": {**plain, "update_rule": "none", "memory_in_context": True},
            "sft": {**plain, "update_rule": "sft", "write_memory": False},
            "grpo": {**plain, "update_rule": "grpo", "write_memory": False},
            "lifelong": {"update_rule": "grpo", "guard": guard, "grpo": grpo},
        }
        return cls(**{**settings, **presets[method], "method": method})


METHODS = ("frozen", "memory", "sft", "grpo", "lifelong")
UPDATE_RULES = ("grpo", "sft", "none")


@dataclass(frozen=True)
class RunSummary:
    model: str
    tasks: list[str]
    episodes: int
    before: dict[str, float]
    after: dict[str, float]
    minutes: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Progress(Protocol):
    """What the runtime tells a progress display (the CLI's bar, or nothing)."""

    def start(self, total_episodes: int, done: int) -> None: ...
    def advance(self, episodes: int, reward: float, stage: str) -> None: ...
    def note(self, text: str) -> None: ...


class NoProgress:
    def start(self, total_episodes: int, done: int) -> None:
        pass

    def advance(self, episodes: int, reward: float, stage: str) -> None:
        pass

    def note(self, text: str) -> None:
        pass


@dataclass(frozen=True)
class _Slot:
    """One update of the schedule: which stage, and which step of the whole run."""

    step: int  # 1-based global step
    stage: int


class Runtime:
    def __init__(
        self,
        config: RunConfig,
        policy: Policy,
        run_dir: Path,
        progress: Progress | None = None,
        actor: Actor | None = None,
    ) -> None:
        self.config = config
        self.stream = Stream.from_dict(config.stream)
        self.policy = policy
        self.run_dir = run_dir
        self.run_id = run_dir.name
        self.progress = progress or NoProgress()
        self.learner: GRPOLearner | SFTLearner = (
            SFTLearner(policy, config.grpo) if config.update_rule == "sft" else GRPOLearner(policy, config.grpo)
        )
        self.store = ExperienceStore(config.store or run_dir / "experience.sqlite")
        self.memory = MemoryBook(self.store, config.memory)
        self.distiller = SelfDistiller(policy, self.learner.optimizer, config.distill)
        self.ring = CheckpointRing(run_dir / "checkpoints", keep=config.checkpoints_kept)
        # Held-out probes: every task of the stream, and the general-ability probes (never trained).
        self.probes = {t: ProbeSet(t, self.stream.probe_size) for t in [*self.stream.tasks, *self.stream.general]}
        self.tasks: dict[str, Task] = {t.label: t for t in [*self.stream.tasks, *self.stream.general]}
        self.generator = torch.Generator().manual_seed(config.seed)
        self.actor: Actor = actor or LocalActor(policy, self.make_env, self.generator)
        self.schedule = self._schedule()
        drift_prompts = self._drift_prompts(config.guard.drift_prompts)
        self.guard = Guard(config.guard, run_dir, drift_prompts, seed=config.seed)
        # Drift from the pretrained model (adapters off), measured at every evaluation for every
        # method, guard or not: forgetting tracks how far the output distribution has moved.
        self.base_drift = ProbeDrift(drift_prompts, seed=config.seed)
        self.learner.refuse_nonfinite = self.guard.enabled
        self._anchors: list[Sample] | None = None  # built on first use (needs the pretrained model)
        # The adapters of the last passed gate: consolidation's format anchor. Anchoring to the
        # pretrained model instead pulled every task being learned back towards it (dev/LOG.md).
        self.good_adapters: AdapterSnapshot | None = None
        # Fresh-item scores by (weights, task), kept while those weights are: see `rescore`.
        self._rescored: dict[tuple[str, str], float] = {}
        self.state: dict[str, Any] = {"before": {}, "evals": [], "episodes": 0, "seconds": 0.0}
        self._clock = time.time()

    # ---- schedule --------------------------------------------------------------------------------
    def _schedule(self) -> list[_Slot]:
        slots: list[_Slot] = []
        for i, stage in enumerate(self.stream.stages):
            for _ in range(math.ceil(stage.episodes / self.config.episodes_per_step)):
                slots.append(_Slot(len(slots) + 1, i))
        return slots

    def _drift_prompts(self, n: int) -> list[list[int]]:
        """Probe prompts for the KL-drift check, taken in turn from every task's probe set."""
        prompts: list[list[int]] = []
        for i in range(n):
            probe = list(self.probes.values())[i % len(self.probes)]
            observation, _ = probe.task.make().reset(seed=probe.seeds[i // len(self.probes) % len(probe.seeds)])
            prompts.append(self.policy.start(observation))
        return prompts

    def make_env(self, label: str) -> Env:
        """A fresh environment for a task label used in this run's jobs."""
        return self.tasks[label].make()

    def _tasks_for(self, slot: _Slot) -> list[Task]:
        """The task of each prompt of a step: the stage's task, plus rehearsal of earlier tasks."""
        current = self.stream.stages[slot.stage].task
        earlier = [t for t in dict.fromkeys(s.task for s in self.stream.stages[: slot.stage]) if t != current]
        slipping = [self.tasks[label] for label in self.guard.slipping() if self.tasks[label] in earlier]
        n = self.config.prompts_per_step
        # Rehearsal is a share of the run's prompts, not of each step's: at 4 prompts a step, 0.125
        # is one old prompt every other step (the running total is rounded down, step by step).
        share = n * self.config.rehearsal
        n_old = min(n - 1, math.floor(slot.step * share) - math.floor((slot.step - 1) * share)) if earlier else 0
        if slipping:  # re-learn what slips, even when plain rehearsal is off
            n_old = max(n_old, min(n - 1, 1))
        # Slipping tasks first, then round-robin over earlier tasks across steps.
        rotation = [earlier[(slot.step * n_old + i) % len(earlier)] for i in range(n_old)] if earlier else []
        old = (slipping + rotation)[:n_old]
        return [current] * (n - n_old) + old

    def _jobs_for(self, slot: _Slot) -> list[Job]:
        # Seeds depend only on (run seed, step): a resumed run draws the same items.
        rng = random.Random(f"{self.config.seed}:{slot.step}")
        jobs = []
        for i, task in enumerate(self._tasks_for(slot)):
            (seed,) = self.probes[task].training_seeds(rng, 1)
            context = self._recall(task, seed) if self.config.memory_in_context else ""
            jobs += [Job(task.label, seed, group=f"{slot.step}:{i}", context=context)] * self.config.grpo.group_size
        return jobs

    def _recall(self, task: Task, seed: int) -> str:
        """Lessons and examples from memory about this item, as context for acting on it."""
        return notes(self.memory.retrieve(task.label, task.make().item_key(seed)))

    # ---- evaluation ------------------------------------------------------------------------------
    def _probe_jobs(self, task: Task, seeds: Sequence[int]) -> list[Job]:
        recall = self.config.memory_in_context
        return [Job(task.label, s, split="probe", context=self._recall(task, s) if recall else "") for s in seeds]

    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy success on every task's held-out probe set; probe episodes are stored, not learned."""
        jobs = [job for task, probe in self.probes.items() for job in self._probe_jobs(task, probe.seeds)]
        episodes = self.actor.play(jobs, self.config.generation(0.0))
        self.store.add(episodes, run_id=self.run_id, step=step, model=self.policy.name)
        scores = {}
        for task in self.probes:
            mine = [e for e in episodes if e.env == task.label]
            scores[task.label] = sum(e.success for e in mine) / len(mine)
        if not self.base_drift.has_reference:
            with self.policy.model.disable_adapter():
                self.base_drift.set_reference(self.policy)
        record = {
            "type": "eval",
            "step": step,
            "episodes": self.state["episodes"],
            "scores": scores,
            "drift/kl_base": self.base_drift.read(self.policy).kl,
        }
        self.state["evals"].append(record)
        self._log(record)
        return scores

    def rescore(self, task: str, against: str) -> Rescored:
        """Greedy success on `task`'s fresh held-out items now and by `against` ("last_good": the
        adapters of the last passed gate; "pretrained": adapters off). The guard asks for this
        when a probe drop is over budget; a reference's scores are kept until it changes."""
        probe = self.probes[self.tasks[task]]
        if self._anchored and probe.task in self.stream.general:
            # Their items beyond the probes are the anchor's, held to the pretrained answers by
            # training: scoring on them would hide erosion. The probes alone decide.
            return Rescored(0.0, 0.0, 0)
        jobs = self._probe_jobs(probe.task, probe.fresh_seeds(self.config.guard.confirm_items))
        if not jobs:
            return Rescored(0.0, 0.0, 0)
        generation = self.config.generation(0.0)

        def success(weights: str, loaded: AbstractContextManager[Any] | None = None) -> float:
            """Score with `weights` (put in place by `loaded`), unless scored since they changed."""
            if (weights, task) not in self._rescored:
                # In this process, whatever the actor: the reference weights exist only here, and
                # a generator of its own keeps the run's sampling stream untouched.
                with loaded or nullcontext():
                    played = play(self.policy, jobs, self.make_env, generation, torch.Generator().manual_seed(0))
                self._rescored[weights, task] = sum(e.success for e in played) / len(jobs)
            return self._rescored[weights, task]

        if against == "pretrained":
            reference = success("pretrained", self.policy.model.disable_adapter())
        elif against == "last_good" and self.good_adapters is not None:
            reference = success("last_good", self.good_adapters.loaded(self.policy))
        else:
            raise ValueError(f"cannot score against {against!r}: expected 'last_good' or 'pretrained'")
        return Rescored(success(f"version {self.policy.version}"), reference, len(jobs))

    # ---- the loop --------------------------------------------------------------------------------
    def run(self, resume: bool = False, stop_after: int | None = None) -> RunSummary:
        """Run the stream to its end (or `stop_after` updates); resume from the newest checkpoint."""
        self._clock = time.time()
        done_steps = self.restore() if resume else self._start()
        total = len(self.schedule) * self.config.episodes_per_step
        self.progress.start(total, self.state["episodes"])
        if done_steps == 0 and not self.state["before"]:
            self.progress.note("evaluating the untrained model on held-out probes")
            self.state["before"] = self.evaluate(step=0)
            self.guard.gate(0, self.policy, self.state["before"], guarded=[])
            self._mark_good(self.state["before"])
            self.checkpoint(0, good=True)
        for n, slot in enumerate(self.schedule[done_steps:]):
            if stop_after is not None and n >= stop_after:
                break
            verdict = self._step(slot)
            gated = False
            last_of_stage = slot.step == len(self.schedule) or self.schedule[slot.step].stage != slot.stage
            if last_of_stage or (self.config.eval_every and slot.step % self.config.eval_every == 0):
                self.progress.note(f"step {slot.step}: evaluating probes")
                scores = self.evaluate(step=slot.step)
                if verdict.keep:  # the thorough gate piggybacks on the evaluation: no extra probes
                    trained = [self.stream.stages[slot.stage].task.label]  # a gate never spans stages
                    verdict = self.guard.gate(
                        slot.step,
                        self.policy,
                        scores,
                        self._guarded(slot),
                        self._general(),
                        trained,
                        rescore=self.rescore,
                        probe_items=self.stream.probe_size,
                    )
                    gated = True
                if verdict.keep and gated:
                    self._mark_good(scores)
            if not verdict.keep and self.guard.enabled:
                self._rollback(slot.step, verdict)
                if gated or last_of_stage:  # the recorded scores must be those of the kept weights
                    self.evaluate(step=slot.step)
            # One checkpoint per step, after its evaluation: a crash anywhere in the step redoes
            # it on resume from the stored episodes.
            self.checkpoint(slot.step, good=gated and verdict.keep)
        return self.summary()

    def _mark_good(self, scores: dict[str, float]) -> None:
        self.guard.mark_good(self.policy, scores)
        if self._keeps_good_adapters:
            self.good_adapters = AdapterSnapshot(self.policy)
        self._rescored = {k: v for k, v in self._rescored.items() if k[0] != "last_good"}

    @property
    def _anchored(self) -> bool:
        """Updates hold general-ability items to the pretrained model's answers."""
        return self.config.grpo.anchor_coef > 0 and self.config.anchor_items > 0

    @property
    def _keeps_good_adapters(self) -> bool:
        """Consolidation anchors to them; the guard re-measures suspect drops against them."""
        return self.config.consolidate or (self.guard.enabled and self.config.guard.confirm_items > 0)

    def _general(self) -> list[str]:
        return [t.label for t in self.stream.general]

    def _guarded(self, slot: _Slot) -> list[str]:
        """Tasks that must not regress: general probes and every task reached so far."""
        reached = {s.task.label for s in self.stream.stages[: slot.stage + 1]}
        return self._general() + sorted(reached)

    def _rollback(self, step: int, verdict: Verdict) -> None:
        good = self.ring.latest_good()
        if good is None:  # cannot happen: step 0 is always good
            raise RuntimeError("no good checkpoint to roll back to")
        self.ring.restore(good, self.policy.model, self.learner.optimizer)
        self.policy.version += 1  # new identity for restored weights; versions never repeat
        self.guard.rolled_back(step, good.step, verdict.reason)
        self.progress.note(f"step {step}: update rejected ({verdict.reason}); rolled back to step {good.step}")
        self._log({"type": "rollback", "step": step, "to_step": good.step, "reason": verdict.reason})

    def _start(self) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=1))
        return 0

    def _step(self, slot: _Slot) -> Verdict:
        """Act, store, screen, learn, check: one update of the schedule."""
        t0 = time.time()
        jobs = self._jobs_for(slot)
        stored = self.store.episodes(run_id=self.run_id, step=slot.step, split="train")
        if len(stored) == len(jobs):  # the crash came after storing, before the update: reuse
            episodes = stored
            self._log({"type": "resume", "step": slot.step, "reused_episodes": len(stored)})
        else:
            episodes = self.actor.play(jobs, self.config.generation(self.config.grpo.temperature))
            self.store.add(episodes, run_id=self.run_id, step=slot.step, model=self.policy.name)
        t_act = time.time() - t0
        prefetch = getattr(self.actor, "prefetch", None)  # actors that sample ahead (scale/ray_actor.py)
        if prefetch is not None and slot.step < len(self.schedule):
            # Let them sample the next step while this one learns; they bound the staleness.
            prefetch(self._jobs_for(self.schedule[slot.step]), self.config.generation(self.config.grpo.temperature))
        if self.config.write_memory and self.config.memory_in_context:
            self._remember(episodes)
        learnable = self.guard.screen(slot.step, episodes)
        self.guard.before_update(self.policy)
        self.learner.lr_scale = self.guard.state.lr_scale
        report = self._update(learnable, slot.step)
        verdict = self.guard.after_update(slot.step, report, self.policy)
        consolidation: dict[str, float] = {}
        if verdict.keep and self.config.consolidate:
            consolidation, verdict = self._consolidate(slot, episodes)
        self.state["episodes"] += len(episodes)
        stage = self.stream.stages[slot.stage].task.label
        record: dict[str, Any] = {
            "type": "update",
            "step": slot.step,
            "stage": stage,
            "episodes": self.state["episodes"],
            "applied": report.applied,
            "reason": report.reason,
            "adapter_version": self.policy.version,
            "time/act_s": t_act,
            "time/learn_s": time.time() - t0 - t_act,
            "success/train": sum(e.success for e in episodes) / len(episodes),
            "guard/keep": verdict.keep,
            "guard/findings": [f.detector for f in verdict.findings],
            "guard/screened_out": len(episodes) - len(learnable),
            **report.metrics,
            **consolidation,
        }
        self._log(record)
        self.progress.advance(len(episodes), float(report.metrics.get("reward/mean", 0.0)), stage)
        return verdict

    def _update(self, episodes: list[Episode], step: int) -> UpdateReport:
        rule = self.config.update_rule
        if rule == "none":
            rewards = [e.reward for e in episodes]
            mean = sum(rewards) / len(rewards) if rewards else 0.0
            return UpdateReport(self.learner.step, False, {"reward/mean": mean}, reason="this method does not learn")
        if rule == "sft":
            return self.learner.update(make_sft_batch(episodes))
        assert isinstance(self.learner, GRPOLearner)
        return self.learner.update(make_batch(episodes, self.config.grpo.scale_rewards), self.anchors(step))

    def anchors(self, step: int) -> list[Sample]:
        """The general-ability anchor items of one update: the next `anchor_per_step` of the pool."""
        pool = self.anchor_pool()
        n = min(self.config.anchor_per_step, len(pool))
        return [pool[(step * n + i) % len(pool)] for i in range(n)]

    def anchor_pool(self) -> list[Sample]:
        """Distinct training items of the general tasks with the pretrained model's greedy answers.
        Deterministic, so a resumed run rebuilds the same pool."""
        if self._anchors is not None:
            return self._anchors
        prompts = []
        if self._anchored:
            for task in self.stream.general:
                env = task.make()
                rng = random.Random(f"{self.config.seed}:anchor:{task.label}")
                seeds = self.probes[task].training_seeds(rng, 8 * self.config.anchor_items)
                distinct = list({env.item_key(s): s for s in seeds}.values())[: self.config.anchor_items]
                prompts += [self.policy.start(env.reset(seed=s)[0]) for s in distinct]
        with self.policy.model.disable_adapter():
            answers = self.policy.respond(prompts, self.config.generation(0.0)) if prompts else []
        samples = [
            Sample(tuple(p), c.token_ids, c.logprobs, self.policy.answer_mask(c), 0.0)
            for p, c in zip(prompts, answers, strict=True)
        ]
        self._anchors = [a for a in samples if sum(a.loss_mask)]
        return self._anchors

    def _remember(self, episodes: list[Episode]) -> None:
        """Memory method: a lesson for every failed item, an example for every solved one."""
        by_item: dict[tuple[str, int], list[Episode]] = {}
        for ep in episodes:
            by_item.setdefault((ep.env, ep.seed), []).append(ep)
        for eps in by_item.values():
            wins = [e for e in eps if e.success]
            self.memory.add_example(wins[0]) if wins else self.memory.add_lesson(eps[0])

    def _consolidate(self, slot: _Slot, episodes: list[Episode]) -> tuple[dict[str, float], Verdict]:
        """The failure path: items where every sample failed are retried with their lesson in
        context; retries that succeed are distilled into the weights (teacher = with the lesson,
        student = without), mixed with replay of lessons consolidated before."""
        groups: dict[str, list[Episode]] = {}
        for ep in episodes:
            groups.setdefault(ep.group, []).append(ep)
        stuck = [eps[0] for eps in groups.values() if not any(e.success for e in eps) and eps[0].turns]
        stuck = [ep for ep in stuck if self.make_env(ep.env).max_turns == 1]  # single-turn lessons only
        if not stuck:
            return {"memory/stuck": 0.0}, Verdict(True)
        lessons = {ep.group: self.memory.add_lesson(ep) for ep in stuck}
        jobs = [
            Job(ep.env, ep.seed, group=f"{ep.group}:retry", split="retry", context=notes([lessons[ep.group]]))
            for ep in stuck
            for _ in range(self.config.retries)
        ]
        retries = self.actor.play(jobs, self.config.generation(1.0))
        self.store.add(retries, run_id=self.run_id, step=slot.step, model=self.policy.name)
        new: list[Lesson] = []
        for ep in stuck:
            wins = [r for r in retries if r.group == f"{ep.group}:retry" and r.success]
            self.memory.record([lessons[ep.group]], won=bool(wins))
            if wins:
                student = tuple(self.policy.start(ep.turns[0].observation))
                new.append(Lesson(student, wins[0].turns[0].prompt_ids, tuple(w.turns[0].completion for w in wins)))
        metrics = {"memory/stuck": float(len(stuck)), "memory/retry_solved": float(len(new))}
        if not new:
            return metrics, Verdict(True)
        replay = self._replay_lessons(exclude={lessons[g].id for g in lessons})
        self.guard.before_update(self.policy)
        self.distiller.lr_scale = self.guard.state.lr_scale
        report = self.distiller.update(new + replay, self.generator, reference=self.good_adapters)
        verdict = self.guard.after_update(slot.step, report, self.policy, kind="distill")
        return {**metrics, **report.metrics, "memory/replayed": float(len(replay))}, verdict

    def _replay_lessons(self, exclude: set[str]) -> list[Lesson]:
        """Lessons that helped before (a retry with them succeeded), as replay for distillation."""
        helped = [i for i in self.memory.items() if i.kind == "lesson" and i.wins > 0 and i.id not in exclude]
        rng = random.Random(f"{self.config.seed}:replay:{len(helped)}")
        return [self.lesson_of(item) for item in rng.sample(helped, min(self.config.replay_lessons, len(helped)))]

    def lesson_of(self, item: MemoryItem) -> Lesson:
        """A memory item as a distillation lesson: its question with and without the item in context."""
        student = tuple(self.policy.start(item.key))
        teacher = tuple(self.policy.start(f"{notes([item])}\n\n{item.key}"))
        return Lesson(student, teacher)

    # ---- persistence -----------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        record = {"time": time.time(), **record}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def checkpoint(self, step: int, good: bool) -> None:
        now = time.time()
        self.state["seconds"] += now - self._clock
        self._clock = now
        state = {
            **self.state,
            "version": self.policy.version,
            "learner_step": self.learner.step,
            "good": good,  # passed the update gate: a rollback target
            "guard": self.guard.to_dict(),
            "rng": self.generator.get_state().tolist(),
        }
        self.ring.save(self.policy.model, self.learner.optimizer, step, state)

    def restore(self) -> int:
        """Load the newest checkpoint (adapters, optimizer, loop and guard state); returns its step."""
        checkpoint = self.ring.latest()
        if checkpoint is None:
            return 0
        good = self.ring.latest_good() if self._keeps_good_adapters else None
        if good is not None:  # the adapters of the last passed gate
            self.ring.restore(good, self.policy.model, None)
            self.good_adapters = AdapterSnapshot(self.policy)
        self.ring.restore(checkpoint, self.policy.model, self.learner.optimizer)
        s = checkpoint.state
        self.state = {k: s[k] for k in ("before", "evals", "episodes", "seconds")}
        self.policy.version = int(s["version"])
        self.learner.step = int(s["learner_step"])
        self.generator.set_state(torch.tensor(s["rng"], dtype=torch.uint8))
        self.guard.load(s["guard"])
        if self.guard.enabled:  # the drift reference is samples, not saved: re-draw it
            self.guard.set_drift_reference(self.policy)
        self._log({"type": "resume", "step": checkpoint.step, "version": self.policy.version})
        return checkpoint.step

    def summary(self) -> RunSummary:
        after = self.state["evals"][-1]["scores"] if self.state["evals"] else {}
        return RunSummary(
            model=self.policy.name,
            tasks=[t.label for t in self.stream.tasks],
            episodes=int(self.state["episodes"]),
            before=dict(self.state["before"]),
            after=dict(after),
            minutes=round(self.state["seconds"] / 60, 2),
        )
