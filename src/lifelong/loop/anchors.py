"""The general-ability anchor: items the run never trains on, held to the pretrained model's answers.

The pool is distinct training items of the stream's `general` tasks (never their probes), answered
greedily by the pretrained model (adapters off). Every update takes the next `anchor_per_step` of
them in turn and the GRPO learner holds its answers there (`anchor_coef`, learn/grpo.py): few
anchored items protect only themselves, so the pool is large and rotates (dev/LOG.md).
"""

from __future__ import annotations

import random

from lifelong.loop.config import RunConfig
from lifelong.model.policy import Policy
from lifelong.streams.stream import ProbeSet, Stream, Task
from lifelong.types import Sample


class AnchorPool:
    """The anchor items of a run. Built on first use (it needs the pretrained model's answers) and
    deterministic, so a resumed run rebuilds the same pool."""

    def __init__(self, config: RunConfig, stream: Stream, probes: dict[Task, ProbeSet], policy: Policy) -> None:
        self.config = config
        self.stream = stream
        self.probes = probes
        self.policy = policy
        self._pool: list[Sample] | None = None

    def for_step(self, step: int) -> list[Sample]:
        """The anchor items of one update: the next `anchor_per_step` of the pool."""
        pool = self.pool()
        n = min(self.config.anchor_per_step, len(pool))
        return [pool[(step * n + i) % len(pool)] for i in range(n)]

    def pool(self) -> list[Sample]:
        """Distinct training items of the general tasks with the pretrained model's greedy answers."""
        if self._pool is not None:
            return self._pool
        prompts = []
        if self.config.anchored:
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
        self._pool = [a for a in samples if sum(a.loss_mask)]
        return self._pool


__all__ = ["AnchorPool"]
