"""The environment interface: what the agent acts in.

Shaped like Gymnasium's `Env` so its users feel at home: `reset(seed=...)` returns
`(observation, info)` and `step(action)` returns `(observation, reward, terminated, truncated, info)`
as a named tuple. Observations and actions are text. The action is the agent's *answer* only; the
runtime never passes the chain of thought to an environment, so no reward can read it.

Every environment is seeded and reproducible: the same seed gives the same item and the same
responses to the same actions. `info["answer"]` holds a ground-truth answer (for reports and for
the contract test that checks it earns full reward); a multi-turn game also gives
`info["solution"]`, a list of actions that wins from that seed.

Rewards are in [0, 1]. A multi-turn `Game` pays once, on its last step: 1.0 for a win, at most
`PARTIAL_CREDIT` for progress in a game not won, and 0 when the agent made no progress, so the
sum over an episode stays in [0, 1] and garbage earns nothing. With turn credit
(`make(game, turn_credit=True)`) it pays progress on the move that made it instead, and the rest of
1.0 on a win: the same sum at most, spread over the moves that earned it.
"""

from __future__ import annotations

import enum
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from lifelong.errors import ConfigError


@dataclass(frozen=True)
class Knob:
    """A difficulty setting of a task: an integer keyword of its constructor (read back with
    `Env.knob`), and its easiest value. An automatic curriculum (loop/curriculum.py) steps it
    from the stream's value down towards `easiest` while every attempt fails."""

    name: str
    easiest: int


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
    # Whether showing the expected answer after a failure is part of the task (a tutor's exercise).
    # Off: what learns from a failure sees the attempt, the reward and what the environment said,
    # never `info["answer"]` or `info["solution"]` (real tasks rarely come with an answer key).
    shows_answer: ClassVar[bool] = False
    difficulty: tuple[Knob, ...] = ()  # the knobs a curriculum may turn down

    @abstractmethod
    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode; returns (first observation, info)."""

    @abstractmethod
    def step(self, action: str) -> StepResult:
        """Apply the agent's answer; returns the next observation and the reward for this step."""

    @classmethod
    def step_all(cls, envs: Sequence[Env], actions: Sequence[str]) -> list[StepResult | Exception]:
        """Step several environments of this class, one action each (the actor's turn). One by one
        here; a class whose steps share work overrides it (an imagined game asks its world model
        once for all). An environment that raises gets its exception back, not the others'."""
        results: list[StepResult | Exception] = []
        for env, action in zip(envs, actions, strict=True):
            try:
                results.append(env.step(action))
            except Exception as exc:  # a broken environment fails its own episode only
                results.append(exc)
        return results

    def item_key(self, seed: int) -> str:
        """What identifies the item behind a seed (two seeds may give the same item). Probe sets
        exclude their items from training by this key, not only by seed."""
        observation, _ = self.reset(seed)
        return observation

    def knob(self, name: str) -> int:
        """The current value of a difficulty knob (by default the attribute of that name)."""
        return int(getattr(self, name))


@dataclass(frozen=True)
class Item:
    """A single-turn task instance: the question shown, the reference answer, extra facts.

    `meta` goes into the episode's info (and the experience store); `hidden` is what the scorer
    needs but reports do not (e.g. a library's whole item), kept out of both.
    """

    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)
    hidden: Any = field(default=None, compare=False, repr=False)


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

    def item_for(self, seed: int | None) -> Item:
        """The item behind a seed. Override to map seeds to items directly (e.g. a seed modulo a
        fixed list, so consecutive seeds never repeat an item)."""
        return self.generate(random.Random(seed))

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self._item = self.item_for(seed)
        return self._item.question, {"answer": self._item.answer, **self._item.meta}

    def step(self, action: str) -> StepResult:
        if self._item is None:
            raise RuntimeError(f"{self.name}: call reset() before step()")
        item, self._item = self._item, None
        reward = float(self.score(action, item))
        return StepResult("", reward, True, False, {"answer": item.answer, **item.meta})

    def item_key(self, seed: int) -> str:
        return self.item_for(seed).question


# The most a game that was not won can earn; a win earns 1.0. Keeping partial credit well below a win
# means the group-relative advantage always prefers finishing the game to hovering near the goal.
PARTIAL_CREDIT = 0.5


class Outcome(enum.StrEnum):
    """Where a game stands after a move."""

    PLAYING = "playing"
    WON = "won"
    LOST = "lost"  # ended early without a win (fell in a hole, lost to the opponent)


class Game(Env):
    """A multi-turn game with one reward, paid on its last step.

    Subclasses implement `start(rng)` (set up a game, return the first observation and info with
    "answer" and "solution") and `move(action)` (apply one action, return the next observation and
    the outcome), and may implement `progress()` in [0, 1] for partial credit. The episode ends on
    a win, a loss, or after `max_turns` actions (truncated). The final reward is 1.0 for a win, else
    `PARTIAL_CREDIT * progress()`.

    With `turn_credit` (see `with_turn_credit`) each move earns `PARTIAL_CREDIT` times the progress
    it adds beyond the best reached so far, and a win earns the rest of 1.0: a long game then says
    which of its moves got somewhere, and the episode still sums to 1.0 for a win and to
    `PARTIAL_CREDIT` times the best progress otherwise (a move that loses ground pays nothing and
    takes nothing back, so every reward stays in [0, 1]).
    """

    turn_credit: bool = False

    def __init__(self, max_turns: int) -> None:
        self.max_turns = max_turns
        self._turn = 0
        self._over = True
        self._info: dict[str, Any] = {}
        self._best = 0.0  # the best progress reached in this game, turn credit's high-water mark
        self._paid = 0.0

    @abstractmethod
    def start(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        """Set up a new game from `rng`; returns (first observation, info with answer and solution)."""

    @abstractmethod
    def move(self, action: str) -> tuple[str, Outcome]:
        """Apply one action; returns (next observation, outcome)."""

    def progress(self) -> float:
        """How far towards a win the game is, in [0, 1]; 0 when no useful action was taken."""
        return 0.0

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        self._turn, self._over, self._best, self._paid = 0, False, 0.0, 0.0
        observation, self._info = self.start(random.Random(seed))
        return observation, dict(self._info)

    def step(self, action: str) -> StepResult:
        if self._over:
            raise RuntimeError(f"{self.name}: the game is over; call reset() before step()")
        self._turn += 1
        observation, outcome = self.move(action)
        truncated = outcome is Outcome.PLAYING and self._turn >= self.max_turns
        self._over = outcome is not Outcome.PLAYING or truncated
        info = {**self._info, "outcome": outcome.value, "turns": self._turn}
        if self.turn_credit:
            reward = self._turn_reward(outcome)
            info["progress"] = self._best
        elif outcome is Outcome.WON:
            reward = 1.0
        else:
            reward = PARTIAL_CREDIT * self._progress() if self._over else 0.0
        return StepResult(observation, reward, outcome is not Outcome.PLAYING, truncated, info)

    def _progress(self) -> float:
        return min(max(self.progress(), 0.0), 1.0)

    def _turn_reward(self, outcome: Outcome) -> float:
        """This move's share under turn credit: the progress it added, or on a win the rest of 1.0.
        Shares are multiples of 1/1024, so they add up exactly: a win sums to 1.0, not 0.9999."""
        if outcome is Outcome.WON:
            reward = 1.0 - self._paid
            self._best = 1.0
        else:
            self._best = max(self._best, self._progress())
            reward = round(PARTIAL_CREDIT * self._best * 1024) / 1024 - self._paid
        self._paid += reward
        return reward


def pays_turn_credit(kind: type[Env]) -> bool:
    """Whether environments of this class can pay turn credit: games that say how far the agent got."""
    return issubclass(kind, Game) and kind.progress is not Game.progress


def with_turn_credit(env: Env) -> Env:
    """`env` paying progress on the move that made it (`Game`'s docstring says how); it must be a
    game that can say how far the agent got."""
    if not isinstance(env, Game) or not pays_turn_credit(type(env)):
        raise ConfigError(
            f"{env.name} cannot say how far the agent got (turn credit needs a game with progress())",
            "leave turn_credit off for it; it pays on a win only",
        )
    env.turn_credit = True
    return env


@contextmanager
def own_random(state: list[Any]) -> Iterator[None]:
    """Run library code that uses Python's global `random` on a generator of its own.

    `state` is a one-element list holding the library's generator state; it is swapped in on entry
    and saved back on exit, and the caller's global state is restored, so a library that reseeds or
    draws from `random` (textarena reseeds it on every reset) neither disturbs the learner's
    randomness nor depends on it.
    """
    outer = random.getstate()
    random.setstate(state[0])
    try:
        yield
    finally:
        state[0] = random.getstate()
        random.setstate(outer)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number(text: str) -> str | None:
    """The last number written in `text` ("x + y = 12." -> "12"), commas in thousands removed."""
    found = _NUMBER.findall(text.replace(",", ""))
    return found[-1] if found else None


def normalize_word(text: str) -> str:
    """Lower-case, strip quotes, spaces and trailing punctuation: '"Apple".' -> 'apple'."""
    return text.strip().strip("\"'`*.!?,;: ").lower()
