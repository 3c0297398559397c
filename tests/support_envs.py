"""Environments for tests only: rewards a random tiny model can earn, so learning has signal.

Used in-process and by CLI subprocesses as `--tasks tests.support_envs:coin`.
"""

from __future__ import annotations

import random

from lifelong.envs.base import Item, SingleTurnTask
from lifelong.envs.registry import register


class Coin(SingleTurnTask):
    """Reward 1 when the answer has an even number of characters (about half of random answers)."""

    name = "coin"

    def generate(self, rng: random.Random) -> Item:
        n = rng.randint(0, 10**6)
        return Item(f"Coin {n}?", "ab", {"n": n})

    def score(self, answer: str, item: Item) -> float:
        return float(len(answer) % 2 == 0 and "%" not in answer)


register("coin", Coin)
