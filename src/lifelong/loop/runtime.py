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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from lifelong.envs.base import Env
from lifelong.errors import ConfigError
from lifelong.guard.checkpoints import CheckpointRing
from lifelong.guard.gate import Guard, GuardConfig, Verdict
from lifelong.learn.grpo import GRPOConfig, GRPOLearner, make_batch
from lifelong.loop.actor import Actor, Job, LocalActor
from lifelong.memory.store import SQLiteStore
from lifelong.model.policy import GenerationConfig, LoraSettings, Policy
from lifelong.streams.stream import ProbeSet, Stream, Task


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs besides the model weights. Defaults are the `make demo` run."""

    stream: dict[str, Any]  # Stream.to_dict()
    model: str | None = None  # None = the embedded default model
    prompts_per_step: int = 4  # distinct items per update; each is sampled group_size times
    # On 2 CPU cores with the 135M default, thinking costs 3-8x per episode and measured no better on
    # the demo's first task (dev/LOG.md); GPU users raise it.
    reasoning_effort: str = "none"
    thinking_tokens: int | None = None
    answer_tokens: int = 12
    eval_every: int = 5  # steps between probe evaluations (0 = only at stage ends)
    # Fraction of each step's prompts drawn from earlier stages' tasks (rehearsal): on-policy
    # practice of old skills is the cheapest guard against forgetting them. 0 = plain sequential.
    rehearsal: float = 0.25
    seed: int = 0
    checkpoints_kept: int = 3
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    guard: GuardConfig = field(default_factory=GuardConfig)

    def __post_init__(self) -> None:
        if self.prompts_per_step < 1:
            raise ConfigError("prompts_per_step must be >= 1", "the default is 4")
        if not 0.0 <= self.rehearsal < 1.0:
            raise ConfigError(f"rehearsal must be in [0, 1), got {self.rehearsal}", "0.25 rehearses 1 prompt in 4")
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
        return cls(**d)


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
        self.learner = GRPOLearner(policy, config.grpo)
        self.store = SQLiteStore(run_dir / "experience.sqlite")
        self.ring = CheckpointRing(run_dir / "checkpoints", keep=config.checkpoints_kept)
        # Held-out probes: every task of the stream, and the general-ability probes (never trained).
        self.probes = {t: ProbeSet(t, self.stream.probe_size) for t in [*self.stream.tasks, *self.stream.general]}
        self.tasks: dict[str, Task] = {t.label: t for t in [*self.stream.tasks, *self.stream.general]}
        self.generator = torch.Generator().manual_seed(config.seed)
        self.actor: Actor = actor or LocalActor(policy, self.make_env, self.generator)
        self.schedule = self._schedule()
        self.guard = Guard(config.guard, run_dir, self._drift_prompts(config.guard.drift_prompts))
        self.learner.refuse_nonfinite = self.guard.enabled
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
        n_old = min(n - 1, round(n * self.config.rehearsal)) if earlier else 0
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
            jobs += [Job(task.label, seed, group=f"{slot.step}:{i}")] * self.config.grpo.group_size
        return jobs

    # ---- evaluation ------------------------------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy success on every task's held-out probe set; probe episodes are stored, not learned."""
        jobs = []
        for task, probe in self.probes.items():
            jobs += [Job(task.label, s, split="probe") for s in probe.seeds]
        episodes = self.actor.play(jobs, self.config.generation(0.0))
        self.store.add(episodes, run_id=self.run_id, step=step, model=self.policy.name)
        scores = {}
        for task in self.probes:
            mine = [e for e in episodes if e.env == task.label]
            scores[task.label] = sum(e.success for e in mine) / len(mine)
        record = {"type": "eval", "step": step, "episodes": self.state["episodes"], "scores": scores}
        self.state["evals"].append(record)
        self._log(record)
        return scores

    # ---- the loop --------------------------------------------------------------------------------
    def run(self, resume: bool = False, stop_after: int | None = None) -> RunSummary:
        """Run the stream to its end (or `stop_after` updates); resume from the newest checkpoint."""
        self._clock = time.time()
        done_steps = self._restore() if resume else self._start()
        total = len(self.schedule) * self.config.episodes_per_step
        self.progress.start(total, self.state["episodes"])
        if done_steps == 0 and not self.state["before"]:
            self.progress.note("evaluating the untrained model on held-out probes")
            self.state["before"] = self.evaluate(step=0)
            self.guard.gate(0, self.policy, self.state["before"], guarded=[])
            self.guard.mark_good(self.policy, self.state["before"], self.generator)
            self._checkpoint(0, good=True)
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
                    verdict = self.guard.gate(slot.step, self.policy, scores, self._guarded(slot))
                    gated = True
                if verdict.keep and gated:
                    self.guard.mark_good(self.policy, scores, self.generator)
            if not verdict.keep and self.guard.enabled:
                self._rollback(slot.step, verdict)
                if gated or last_of_stage:  # the recorded scores must be those of the kept weights
                    self.evaluate(step=slot.step)
            # One checkpoint per step, after its evaluation: a crash anywhere in the step redoes
            # it on resume from the stored episodes.
            self._checkpoint(slot.step, good=gated and verdict.keep)
        return self.summary()

    def _guarded(self, slot: _Slot) -> list[str]:
        """Tasks that must not regress: general probes and every task reached so far."""
        reached = {s.task.label for s in self.stream.stages[: slot.stage + 1]}
        return [t.label for t in self.stream.general] + sorted(reached)

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
        learnable = self.guard.screen(slot.step, episodes)
        self.guard.before_update(self.policy)
        self.learner.lr_scale = self.guard.state.lr_scale
        report = self.learner.update(make_batch(learnable, self.config.grpo.scale_rewards))
        verdict = self.guard.after_update(slot.step, report, self.policy)
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
        }
        self._log(record)
        self.progress.advance(len(episodes), float(report.metrics.get("reward/mean", 0.0)), stage)
        return verdict

    # ---- persistence -----------------------------------------------------------------------------
    def _log(self, record: dict[str, Any]) -> None:
        record = {"time": time.time(), **record}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _checkpoint(self, step: int, good: bool) -> None:
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

    def _restore(self) -> int:
        checkpoint = self.ring.latest()
        if checkpoint is None:
            return 0
        self.ring.restore(checkpoint, self.policy.model, self.learner.optimizer)
        s = checkpoint.state
        self.state = {k: s[k] for k in ("before", "evals", "episodes", "seconds")}
        self.policy.version = int(s["version"])
        self.learner.step = int(s["learner_step"])
        self.generator.set_state(torch.tensor(s["rng"], dtype=torch.uint8))
        self.guard.load(s["guard"])
        if self.guard.enabled:  # the drift reference is samples, not saved: re-draw it
            self.guard.set_drift_reference(self.policy, self.generator)
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
