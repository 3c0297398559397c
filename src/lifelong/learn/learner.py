"""The interfaces every update rule implements, and the rule that never updates.

A `Learner` turns experience into at most one optimizer step of the policy's adapters:
`batch(episodes, anchors)` makes its `Batch` (each rule has its own targets: group-relative
advantages for GRPO, successes for SFT), `update(batch, lr_scale)` takes the step and returns an
`UpdateReport`. A `LessonLearner` does the same for distillation, whose unit is a `Lesson` (the
same question with and without a lesson in context) rather than a sample.

What learners do not do: they never change `Policy.version` (the learning core does, when a report
says `applied`, loop/learning.py), and they never read the guard; the learning-rate scale the guard
chose arrives as an argument of every `update`. Their `optimizer` and `step` are their checkpointed
state, saved and restored by the learning core.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Protocol

import torch

from lifelong.model.adapters import AdapterSnapshot
from lifelong.types import Batch, Episode, Lesson, Sample, UpdateReport


class Learner(Protocol):
    """An update rule on experience: GRPO (learn/grpo.py), SFT (learn/sft.py), or none."""

    step: int  # updates applied so far

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The adapters' optimizer (None: the weights never change, FrozenLearner)."""
        ...

    def batch(self, episodes: Sequence[Episode], anchors: Sequence[Sample] = ()) -> Batch:
        """The learner's targets from these episodes; `anchors` ride along for rules that hold them."""
        ...

    def update(self, batch: Batch, lr_scale: float = 1.0) -> UpdateReport:
        """At most one optimizer step at `lr_scale` x the configured rate; `applied` says if it was taken."""
        ...


class LessonLearner(Protocol):
    """An update rule on lessons: on-policy self-distillation (learn/distill.py)."""

    step: int

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """Shared with the Batch learner: the adapters have one optimizer state and one checkpoint."""
        ...

    def update(
        self,
        lessons: Sequence[Lesson],
        lr_scale: float = 1.0,
        reference: AdapterSnapshot | None = None,
        anchors: Sequence[Sample] = (),
    ) -> UpdateReport:
        """At most one optimizer step; `reference` is the adapters the format is held to (None:
        pretrained); `anchors` are general-ability items held to the pretrained model."""
        ...


def reward_batch(episodes: Iterable[Episode], samples: Sequence[Sample] = ()) -> Batch:
    """A batch with the episodes' reward statistics (population std), one group per episode."""
    eps = list(episodes)
    rewards = [ep.reward for ep in eps]
    mean = sum(rewards) / len(rewards) if rewards else 0.0
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards)) if rewards else 0.0
    return Batch(tuple(samples), len(eps), 0, mean, std)


class FrozenLearner:
    """The update rule "none" (the `frozen` and `memory` methods): it reports the reward and never
    changes the weights, so the loop around it stays the same as for a learning rule."""

    def __init__(self) -> None:
        self.step = 0
        self.optimizer: torch.optim.Optimizer | None = None

    def batch(self, episodes: Sequence[Episode], anchors: Sequence[Sample] = ()) -> Batch:
        return reward_batch(episodes)

    def update(self, batch: Batch, lr_scale: float = 1.0) -> UpdateReport:
        return UpdateReport(self.step, False, {"reward/mean": batch.reward_mean}, reason="this method does not learn")


__all__ = ["FrozenLearner", "Learner", "LessonLearner", "reward_batch"]
