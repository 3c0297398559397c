"""What a world model learns from: each move of a stored episode as (state, action, outcome).

Only what the agent itself saw is used: the observations, its answers, the rewards and whether the
game ended. `info["answer"]` and `info["solution"]` are never read, so a world model cannot learn a
game's solution from anywhere but play.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lifelong.types import Episode


@dataclass(frozen=True)
class GameState:
    """Where a game stands before a move: the last observation, the moves before it (oldest first,
    as (observation, action) pairs), and which move comes next out of how many the game allows."""

    env: str
    observation: str
    history: tuple[tuple[str, str], ...] = ()
    turn: int = 1
    max_turns: int = 0  # 0: not known

    def after(self, action: str, observation: str, history_turns: int) -> GameState:
        """The state an (imagined or real) move leads to, keeping the last `history_turns` moves."""
        history = (*self.history, (self.observation, action))
        return GameState(
            self.env, observation, history[-history_turns:] if history_turns else (), self.turn + 1, self.max_turns
        )


@dataclass(frozen=True)
class Outcome:
    """What the game did after a move: its next message, the reward paid, whether it ended.
    `observation` is None when the game's last message was not recorded (episodes stored before
    actors kept it): such a move still teaches reward and end of game."""

    observation: str | None
    reward: float
    done: bool


@dataclass(frozen=True)
class Transition:
    """One real move: the state it was taken in, the action (the agent's answer) and the outcome."""

    state: GameState
    action: str
    outcome: Outcome
    episode_id: str = ""
    seed: int = 0


def transitions(episode: Episode, history_turns: int = 0) -> list[Transition]:
    """Every move of `episode` in order. An episode that ended in an environment error gives the
    moves before the error only (the error is not the game's response)."""
    turns = episode.turns
    info = episode.info
    last = len(turns) - 1 if "error" not in info else len(turns) - 2
    max_turns = int(info.get("max_turns", 0) or 0)
    state = GameState(episode.env, turns[0].observation if turns else "", (), 1, max_turns)
    found = []
    for i in range(last + 1):
        action = turns[i].completion.answer
        done = i == len(turns) - 1
        observation = info.get("last_observation") if done else turns[i + 1].observation
        outcome = Outcome(observation, float(turns[i].reward), done)
        found.append(Transition(state, action, outcome, episode.id, episode.seed))
        if not done:
            state = state.after(action, turns[i + 1].observation, history_turns)
    return found


def all_transitions(episodes: Iterable[Episode], history_turns: int = 0) -> list[Transition]:
    """The moves of every multi-move episode (a single-turn task has no dynamics to learn)."""
    return [t for ep in episodes if len(ep.turns) > 1 or ep.info.get("max_turns", 1) > 1
            for t in transitions(ep, history_turns)]  # fmt: skip


def copy_prediction(state: GameState) -> Outcome:
    """The baseline a world model must beat: the game says again what it said last, pays nothing
    and goes on."""
    return Outcome(state.observation, 0.0, False)


def same_observation(predicted: str | None, actual: str | None) -> bool:
    """Observations compared line by line with spaces at either end ignored."""
    if predicted is None or actual is None:
        return False
    lines = [[line.strip() for line in text.strip().splitlines()] for text in (predicted, actual)]
    return lines[0] == lines[1]


@dataclass(frozen=True)
class Accuracy:
    """How often predictions matched real outcomes: the observation (over moves whose next message
    is known), the reward (within 0.05) and the end of game, each a fraction of its moves."""

    observation: float
    reward: float
    done: float
    moves: int


def accuracy(predictions: Sequence[Outcome], actual: Sequence[Transition]) -> Accuracy:
    """Score predicted outcomes against the real ones."""
    if len(predictions) != len(actual):
        raise ValueError(f"{len(predictions)} predictions for {len(actual)} moves")
    known = [(p, t) for p, t in zip(predictions, actual, strict=True) if t.outcome.observation is not None]
    n = max(len(actual), 1)
    return Accuracy(
        observation=sum(same_observation(p.observation, t.outcome.observation) for p, t in known) / max(len(known), 1),
        reward=sum(abs(p.reward - t.outcome.reward) <= 0.05 for p, t in zip(predictions, actual, strict=True)) / n,
        done=sum(p.done == t.outcome.done for p, t in zip(predictions, actual, strict=True)) / n,
        moves=len(actual),
    )
