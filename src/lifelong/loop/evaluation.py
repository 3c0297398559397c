"""Held-out evaluation: probe sets, greedy success on them, drift from the pretrained model, and
re-scoring a suspect drop on fresh items.

Every task of the stream and every general-ability task has a `ProbeSet` of held-out items; they
are played greedily and stored but never learned from. `kl_base` is the KL drift from the
pretrained model (adapters off) on fixed probe prompts, measured at every evaluation for every
method, guard or not: forgetting tracks how far the output distribution has moved. `rescore` is
what the guard asks for when a probe drop is over budget (guard/gate.py `confirm_items`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from lifelong.envs.base import Env
from lifelong.guard.detectors import Rescored
from lifelong.guard.health import ProbeDrift
from lifelong.loop.actor import Actor, Job, play
from lifelong.loop.config import RunConfig
from lifelong.loop.schedule import Recall
from lifelong.model.adapters import AdapterSnapshot
from lifelong.model.policy import Policy
from lifelong.streams.stream import ProbeSet, Stream, Task
from lifelong.types import Episode


class Evaluation:
    """The probes of a run and the measurements made on them."""

    def __init__(
        self,
        config: RunConfig,
        stream: Stream,
        policy: Policy,
        make_env: Callable[[str], Env],
        recall: Recall | None = None,
    ) -> None:
        self.config = config
        self.stream = stream
        self.policy = policy
        self.make_env = make_env
        self.recall = recall  # the memory method answers probes with its notes too
        self.probes = {t: ProbeSet(t, stream.probe_size) for t in [*stream.tasks, *stream.general]}
        self.tasks: dict[str, Task] = {t.label: t for t in [*stream.tasks, *stream.general]}
        self.drift_prompts = self._drift_prompts(config.guard.drift_prompts)
        self.base_drift = ProbeDrift(self.drift_prompts, seed=config.seed)
        # Fresh-item scores by (weights, task), kept while those weights are: see `rescore`.
        self._rescored: dict[tuple[str, str], float] = {}

    def _drift_prompts(self, n: int) -> list[list[int]]:
        """Probe prompts for the KL-drift checks, taken in turn from every task's probe set."""
        prompts: list[list[int]] = []
        for i in range(n):
            probe = list(self.probes.values())[i % len(self.probes)]
            observation, _ = probe.task.make().reset(seed=probe.seeds[i // len(self.probes) % len(probe.seeds)])
            prompts.append(self.policy.start(observation))
        return prompts

    def probe_jobs(self, task: Task, seeds: Sequence[int]) -> list[Job]:
        recall = self.recall
        return [Job(task.label, s, split="probe", context=recall(task, s) if recall else "") for s in seeds]

    def play(self, actor: Actor) -> tuple[list[Episode], dict[str, float]]:
        """Every task's probe set played greedily by `actor`: (episodes, success per task)."""
        jobs = [job for task, probe in self.probes.items() for job in self.probe_jobs(task, probe.seeds)]
        episodes = actor.play(jobs, self.config.generation(0.0))
        scores = {}
        for task in self.probes:
            mine = [e for e in episodes if e.env == task.label]
            scores[task.label] = sum(e.success for e in mine) / len(mine)
        return episodes, scores

    def kl_base(self) -> float:
        """KL drift of the live adapters from the pretrained model on the drift prompts."""
        if not self.base_drift.has_reference:
            with self.policy.pretrained():
                self.base_drift.set_reference(self.policy)
        return self.base_drift.read(self.policy).kl

    def rescore(self, task: str, against: str, last_good: AdapterSnapshot | None) -> Rescored:
        """Greedy success on `task`'s fresh held-out items now and by `against` ("last_good": the
        adapters `last_good`; "pretrained": adapters off). A reference's scores are kept until
        `forget` is told it changed; the live weights' are kept per version."""
        probe = self.probes[self.tasks[task]]
        if self.config.anchored and probe.task in self.stream.general:
            # Their items beyond the probes are the anchor's, held to the pretrained answers by
            # training: scoring on them would hide erosion. The probes alone decide.
            return Rescored(0.0, 0.0, 0)
        jobs = self.probe_jobs(probe.task, probe.fresh_seeds(self.config.guard.confirm_items))
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
            reference = success("pretrained", self.policy.pretrained())
        elif against == "last_good" and last_good is not None:
            reference = success("last_good", last_good.loaded(self.policy))
        else:
            raise ValueError(f"cannot score against {against!r}: expected 'last_good' or 'pretrained'")
        return Rescored(success(f"version {self.policy.version}"), reference, len(jobs))

    def forget(self, weights: str) -> None:
        """The reference `weights` ("last_good") changed: its cached scores are stale."""
        self._rescored = {k: v for k, v in self._rescored.items() if k[0] != weights}


__all__ = ["Evaluation"]
