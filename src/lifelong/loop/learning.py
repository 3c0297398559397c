"""The learning core: experience in, a guarded adapter update out. The one writer of `Policy.version`.

`LearningCore` is the learning half of the runtime, usable without any environment: `Runtime`
(loop/runtime.py) drives it with the episodes of a task stream, the eval harness and Ray through
the runtime, and any other source of experience (a server's feedback) can drive it directly:

    core = LearningCore(policy, GRPOLearner(policy), Guard(GuardConfig(), run_dir), CheckpointRing(...),
                        log=MetricsLog(run_dir / "metrics.jsonl"))
    result = core.learn(step, episodes)       # screen -> learner -> cheap checks -> new version
    if not result.keep:
        core.rollback(step, result.verdict)   # back to the last good checkpoint, learning rate backed off
    ...
    verdict = core.gate(step, scores, guarded=[...])   # thorough checks at an evaluation point
    if verdict.keep:
        core.mark_good(scores)
    core.checkpoint(step, good=verdict.keep)

Values flow one way. The guard returns values (the episodes it lets through, the learning-rate
scale, a `Verdict`); the learner returns an `UpdateReport`; the core applies them: it passes the
scale to the learner, and when a report says `applied` it gives the adapters a new version. No
component writes another's attributes. Versions only grow: every change of the adapters (an update,
a rollback, an undone update, an update made by an external trainer) takes a new one, so a sampler
holding version v knows exactly which weights it has (scale/sync.py mirrors versions onto copies).

Persistence: `checkpoint` saves adapters, optimizer, the learner's step, the guard's state and the
caller's own state (`extra_state`) atomically in the checkpoint ring; `restore` loads the newest
and hands the caller's state back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lifelong.errors import ConfigError
from lifelong.guard.checkpoints import CheckpointRing
from lifelong.guard.detectors import ChangedAnswers
from lifelong.guard.gate import Guard, Rescorer, Verdict
from lifelong.learn.learner import Learner, LessonLearner
from lifelong.model.adapters import AdapterSnapshot
from lifelong.model.policy import Policy
from lifelong.timing import part
from lifelong.types import Batch, Episode, Lesson, Sample, UpdateReport

Log = Callable[[dict[str, Any]], None]


class MetricsLog:
    """Appends records to a run's metrics.jsonl, each stamped with the wall time."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, record: dict[str, Any]) -> None:
        record = {"time": time.time(), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


@dataclass(frozen=True)
class StepResult:
    """What one call of `learn`, `update` or `distil` did."""

    report: UpdateReport  # the learner's
    verdict: Verdict  # the guard's cheap checks on it
    version: int  # the adapter version after the call
    kind: str = "rl"  # "rl" (a Batch learner) or "distill" (a LessonLearner)
    screened_out: int = 0  # episodes the guard kept from the learner
    undone: bool = False  # a rejected update was undone right away (`distil(..., undo_rejected=True)`)

    @property
    def keep(self) -> bool:
        return self.verdict.keep


@dataclass(frozen=True)
class RestoredState:
    """A checkpoint loaded by `LearningCore.restore`: its step and its whole saved state (the
    caller's `extra_state` keys beside the core's own)."""

    step: int
    state: dict[str, Any]


class LearningCore:
    """Owns the policy's adapter version, the learner(s), the guard, the checkpoint ring, the
    snapshot of the last good adapters, rollback, checkpoint/restore, and the metrics log.

    `distiller` (optional) consolidates lessons and shares the learner's optimizer.
    `keep_good_adapters` keeps a copy of the adapters of the last passed gate in memory
    (`good_adapters`), for re-scoring against them and as the distiller's format anchor.
    `log` receives every record the core writes (`MetricsLog`); None writes nothing.
    """

    def __init__(
        self,
        policy: Policy,
        learner: Learner,
        guard: Guard,
        ring: CheckpointRing,
        distiller: LessonLearner | None = None,
        keep_good_adapters: bool = False,
        log: Log | None = None,
    ) -> None:
        self.policy = policy
        self.learner = learner
        self.guard = guard
        self.ring = ring
        self.distiller = distiller
        self.keep_good_adapters = keep_good_adapters
        self._log = log
        # The adapters of the last passed gate: consolidation's format anchor. Anchoring to the
        # pretrained model instead pulled every task being learned back towards it (dev/LOG.md).
        self.good_adapters: AdapterSnapshot | None = None

    @property
    def version(self) -> int:
        """The adapter version: grows by one with every change of the adapters, never repeats."""
        return self.policy.version

    def _new_version(self) -> int:
        # The only write of Policy.version in the learning path (scale/sync.py mirrors it onto
        # samplers' copies).
        self.policy.version += 1
        return self.policy.version

    def log(self, record: dict[str, Any]) -> None:
        """Append a record to the run's metrics log (if the core was given one)."""
        if self._log is not None:
            self._log(record)

    # ---- learning ---------------------------------------------------------------------------------
    def learn(
        self, step: int, episodes: Sequence[Episode], anchors: Sequence[Sample] = (), auxiliary: Sequence[Sample] = ()
    ) -> StepResult:
        """One update from episodes: the guard screens them, the learner makes its batch (with
        `anchors`, the general-ability items its update holds, and `auxiliary` targets, the
        games' replies a learner may also predict) and learns from it (`update`)."""
        learnable = self.guard.screen(step, list(episodes))
        batch = replace(self.learner.batch(learnable, anchors), auxiliary=tuple(auxiliary))
        return self.update(step, batch, screened_out=len(episodes) - len(learnable))

    def update(self, step: int, batch: Batch, screened_out: int = 0) -> StepResult:
        """One update from a ready batch (a source whose samples are not episodes, e.g. rated
        replies): learner.update at the guard's learning-rate scale, then the guard's cheap checks.
        An applied update takes a new version whatever the verdict; a rejected one stays in place
        until the caller rolls back (`rollback`), as the thorough gate may still be due."""
        with part("guard"):
            lr_scale = self.guard.before_update(self.policy)
        with part("learn"):
            report = self.learner.update(batch, lr_scale)
        if report.applied:
            self._new_version()
        with part("guard"):
            verdict = self.guard.after_update(step, report, self.policy)
        return StepResult(report, verdict, self.version, "rl", screened_out)

    def distil(
        self,
        step: int,
        lessons: Sequence[Lesson],
        reference: AdapterSnapshot | None = None,
        undo_rejected: bool = False,
        anchors: Sequence[Sample] = (),
    ) -> StepResult:
        """One self-distillation update on lessons (same guard path, `kind="distill"`): `reference`
        is the adapters the answer format is held to (None: the pretrained model; the runtime passes
        `good_adapters`); `anchors`: general-ability items held to the pretrained model.
        `undo_rejected` puts the adapters of before back at once when the cheap
        checks reject (offline consolidation: nothing else changed since)."""
        if self.distiller is None:
            raise ConfigError("this run has no distiller: its weights do not learn", "use update_rule grpo or sft")
        before = AdapterSnapshot(self.policy) if undo_rejected else None
        with part("guard"):
            lr_scale = self.guard.before_update(self.policy)
        with part("distill"):
            report = self.distiller.update(lessons, lr_scale, reference, anchors)
        if report.applied:
            self._new_version()
        with part("guard"):
            verdict = self.guard.after_update(step, report, self.policy, kind="distill")
        undone = before is not None and not verdict.keep
        if before is not None and undone:
            before.restore(self.policy)
            self._new_version()  # the restored weights are not those the last version named
        return StepResult(report, verdict, self.version, "distill", undone=undone)

    def note_external_update(self) -> int:
        """The adapters were changed by a trainer outside the core (TRL's, evaluate/trl_runner.py):
        they take a new version, so what is sampled next is told apart. Returns it."""
        return self._new_version()

    # ---- the gate ---------------------------------------------------------------------------------
    def gate(
        self,
        step: int,
        scores: dict[str, float],
        guarded: Sequence[str],
        general: Sequence[str] = (),
        trained: Sequence[str] = (),
        rescore: Rescorer | None = None,
        probe_items: int = 0,
        likelihoods: dict[str, float] | None = None,
        changed: ChangedAnswers | None = None,
    ) -> Verdict:
        """The guard's thorough checks at an evaluation point; the arguments are `Guard.gate`'s."""
        with part("gate"):
            return self.guard.gate(
                step, self.policy, scores, guarded, general, trained, rescore, probe_items, likelihoods, changed
            )

    def mark_good(self, scores: dict[str, float], likelihoods: dict[str, float] | None = None) -> None:
        """The live adapters passed the gate with `scores`: they become the guard's reference (and
        the learning rate recovers one back-off), and `good_adapters` if the core keeps them."""
        self.guard.mark_good(self.policy, scores, likelihoods)
        if self.keep_good_adapters:
            self.good_adapters = AdapterSnapshot(self.policy)

    def rollback(self, step: int, verdict: Verdict) -> int:
        """Undo everything since the last good checkpoint: restore its adapters and optimizer, take
        a new version, and let the guard back off the learning rate. Returns the good step."""
        good = self.ring.latest_good()
        if good is None:  # cannot happen once a step-0 checkpoint was saved good
            raise RuntimeError("no good checkpoint to roll back to")
        with part("checkpoint"):
            self.ring.restore(good, self.policy, self.learner.optimizer)
        self._new_version()  # new identity for restored weights; versions never repeat
        self.guard.rolled_back(step, good.step, verdict.reason)
        self.log({"type": "rollback", "step": step, "to_step": good.step, "reason": verdict.reason})
        return good.step

    # ---- persistence ------------------------------------------------------------------------------
    def checkpoint(self, step: int, good: bool, extra_state: dict[str, Any] | None = None) -> Path:
        """Save adapters, optimizer, learner step, version and guard state (and `extra_state`, the
        caller's own) as the checkpoint of `step`; `good`: it passed the gate, a rollback target."""
        state = {
            **(extra_state or {}),
            "version": self.version,
            "learner_step": self.learner.step,
            "good": good,
            "guard": self.guard.to_dict(),
        }
        with part("checkpoint"):
            return self.ring.save(self.policy, self.learner.optimizer, step, state)

    def restore(self) -> RestoredState | None:
        """Load the newest checkpoint into the policy, the learner and the guard (and the last good
        adapters into `good_adapters`, if kept); None when there is none."""
        checkpoint = self.ring.latest()
        if checkpoint is None:
            return None
        good = self.ring.latest_good() if self.keep_good_adapters else None
        if good is not None:  # the adapters of the last passed gate
            self.ring.restore(good, self.policy, None)
            self.good_adapters = AdapterSnapshot(self.policy)
        self.ring.restore(checkpoint, self.policy, self.learner.optimizer)
        s = checkpoint.state
        self.policy.version = int(s["version"])  # the restored weights' own version, saved with them
        self.learner.step = int(s["learner_step"])
        self.guard.load(s["guard"])
        if self.guard.enabled:  # the drift reference is samples, not saved: re-draw it
            self.guard.set_drift_reference(self.policy)
        return RestoredState(checkpoint.step, s)


__all__ = ["LearningCore", "MetricsLog", "RestoredState", "StepResult"]
