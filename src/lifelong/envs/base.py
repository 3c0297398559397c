"""The environment interface: what the agent acts in.

Shaped like Gymnasium's `Env` so its users feel at home: `reset(seed=...)` returns
`(observation, info)` and `step(action)` returns `(observation, reward, terminated, truncated, info)`
as a named tuple. Observations and actions are text. The action is the agent's *answer* only; the
runtime never passes the chain of thought to an environment, so no reward can read it.

Every environment is seeded and reproducible: the same seed gives the same item and the same
responses to the same actions. `info["answer"]` holds a ground-truth answer (for reports and for
the contract test that checks it earns full reward).
"""

from __future__ import annotations

import random
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple


class StepResult(NamedTuple):
    observation: str
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]


class Env(ABC):
    """A text environment. Subclasses set `name` and implement reset/step."""

    name: ClassVar[str] = "env"
    max_turns: int = 1  # how many actions an episode may take before it is truncated
    success_threshold: float = 1.0  # reward at or above this counts as solved

    @abstractmethod
    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode; returns (first observation, info)."""

    @abstractmethod
    def step(self, action: str) -> StepResult:
        """Apply the agent's answer; returns the next observation and the reward for this step."""

    def item_key(self, seed: int) -> str:
        """What identifies the item behind a seed (two seeds may give the same item). Probe sets
        exclude their items from training by this key, not only by seed."""
        observation, _ = self.reset(seed)
        return observation


@dataclass(frozen=True)
class Item:
    """A single-turn task instance: the question shown, the reference answer, extra facts."""

    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


class SingleTurnTask(Env):
    """A question with a verifiable answer: one action, then the episode ends.

    Subclasses implement `generate(rng)` and `score(answer, item)`.
    """

    def __init__(self) -> None:
        self._item: Item | None = None

    @abstractmethod
    def generate(self, rng: random.Random) -> Item: ...

    @abstractmethod
    def score(self, answer: str, item: Item) -> float:
        """Reward in [0, 1] for `answer` (the answer text only)."""

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        rng = random.Random(seed)
        self._item = self.generate(rng)
        return self._item.question, {"answer": self._item.answer, **self._item.meta}

    def step(self, action: str) -> StepResult:
        if self._item is None:
            raise RuntimeError(f"{self.name}: call reset() before step()")
        item, self._item = self._item, None
        reward = float(self.score(action, item))
        return StepResult("", reward, True, False, {"answer": item.answer, **item.meta})

    def item_key(self, seed: int) -> str:
        return self.generate(random.Random(seed)).question


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number written in `text` ("x + y = 12." -> "12"), commas in thousands removed."""
    found = _NUMBER.findall(text.replace(",", ""))
    return found[-1] if found else None


def normalize_word(text: str) -> str:
    """Lower-case, strip quotes, spaces and trailing punctuation: '"Apple".' -> 'apple'."""
    return text.strip().strip("\"'`*.!?,;: ").lower()
