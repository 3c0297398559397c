"""The general-ability anchor: items the run never trains on, held to the pretrained model's answers.

The pool is distinct training items of general-ability tasks (a stream's `general` tasks, or a
server's), never their probes, answered greedily by the pretrained model (adapters off). Every
update takes the next `per_step` of them in turn and the learner holds its answers there
(`anchor_coef`, learn/grpo.py, learn/distill.py): few anchored items protect only themselves, so
the pool is large and rotates (dev/LOG.md). In plain chat, `shots` > 0 asks every other item after
that many answered example turns: people chat in several turns, and what holds the answer to a
lone question does not hold the one-word reply a conversation of one-word replies asks for.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from lifelong.envs.base import Env
from lifelong.errors import ConfigError
from lifelong.model.policy import GenerationConfig, Policy
from lifelong.streams.stream import ProbeSet
from lifelong.types import Sample


def conversation(env: Env, seed: int, examples: Sequence[int]) -> list[dict[str, str]]:
    """Item `seed` of `env` asked after answered turns of items `examples` (their reference answers)."""
    turns = []
    for s in examples:
        question, info = env.reset(seed=s)
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": str(info["answer"])}]
    return [*turns, {"role": "user", "content": env.reset(seed=seed)[0]}]


def asked_after_examples(policy: Policy, env: Env, seeds: Sequence[int], j: int, shots: int) -> list[int]:
    """Plain chat prompt of item `seeds[j]` after `shots` answered turns of the items that follow it."""
    examples = [seeds[(j + d) % len(seeds)] for d in range(1, shots + 1)]
    return policy.chat_ids(conversation(env, seeds[j], examples), protocol=False)


class AnchorPool:
    """Anchor items: distinct training items of general-ability tasks (never their probes) with the
    pretrained model's greedy replies, asked as `generation` asks (the run's reasoning protocol, or
    plain chat for a server). Built on first use (it needs the pretrained model's answers) and
    deterministic, so a resumed run or a restarted server rebuilds the same pool."""

    def __init__(
        self,
        policy: Policy,
        probes: Sequence[ProbeSet],
        items: int,
        per_step: int,
        seed: int,
        generation: GenerationConfig,
        active: bool = True,
        shots: int = 0,
    ) -> None:
        if shots and generation.protocol:
            raise ConfigError("anchor example turns (shots) are for plain chat", "use shots=0 with the protocol")
        self.policy = policy
        self.probes = list(probes)  # one per general task: its items outside the probes are the pool's
        self.items = items  # distinct items per task
        self.per_step = per_step
        self.seed = seed
        self.generation = replace(generation, temperature=0.0)
        self.active = active
        self.shots = shots
        self._pool: list[Sample] | None = None

    def for_step(self, step: int) -> list[Sample]:
        """The anchor items of one update: the next `per_step` of the pool."""
        pool = self.pool()
        n = min(self.per_step, len(pool))
        return [pool[(step * n + i) % len(pool)] for i in range(n)]

    def pool(self) -> list[Sample]:
        """Distinct training items of the general tasks with the pretrained model's greedy answers."""
        if self._pool is not None:
            return self._pool
        start = self.policy.start if self.generation.protocol else self.policy.chat_start
        prompts = []
        if self.active:
            for probe in self.probes:
                env = probe.task.make()
                rng = random.Random(f"{self.seed}:anchor:{probe.task.label}")
                seeds = probe.training_seeds(rng, 8 * self.items)
                distinct = list({env.item_key(s): s for s in seeds}.values())[: self.items]
                for j, s in enumerate(distinct):
                    if self.shots and j % 2:
                        prompts.append(asked_after_examples(self.policy, env, distinct, j, self.shots))
                    else:
                        prompts.append(start(env.reset(seed=s)[0]))
        with self.policy.pretrained():
            answers = self.policy.respond(prompts, self.generation) if prompts else []
        samples = [
            Sample(tuple(p), c.token_ids, c.logprobs, self.policy.answer_mask(c), 0.0)
            for p, c in zip(prompts, answers, strict=True)
        ]
        self._pool = [a for a in samples if sum(a.loss_mask)]
        return self._pool


__all__ = ["AnchorPool", "asked_after_examples", "conversation"]
