"""Imagined games: an environment whose replies come from the world model (Dyna).

An `ImaginedGame` starts where a real episode started (its first observation, as the agent saw
it) and answers every move with the world model's imagined reply, reward and end of game. The actor
plays it like any game (loop/actor.py), and steps all imagined games of a turn together, so the
world model decodes their replies in one batch. Episodes played here are marked `imagined` in
their info and split, and never count as real experience.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lifelong.envs.base import Env, StepResult
from lifelong.world.model import WorldModel
from lifelong.world.transitions import GameState

SPLIT = "imagined"  # the store split of imagined episodes


class ImaginedGame(Env):
    """A game played inside the world model, from the first observations of real episodes
    (`starts`: seed -> first observation)."""

    name = "imagined"

    def __init__(self, world: WorldModel, label: str, starts: Mapping[int, str], max_turns: int) -> None:
        self.world = world
        self.label = label
        self.starts = dict(starts)
        self.max_turns = max_turns
        self.state: GameState | None = None
        self.paid = 0.0  # reward paid so far this episode

    def reset(self, seed: int | None = None) -> tuple[str, dict[str, Any]]:
        if seed not in self.starts:
            raise KeyError(f"no real start for seed {seed} of {self.label}")
        observation = self.starts[seed]
        self.state = GameState(self.label, observation, (), 1, self.max_turns)
        self.paid = 0.0
        return observation, {"imagined": True}

    def step(self, action: str) -> StepResult:
        result = self.step_all([self], [action])[0]
        if isinstance(result, Exception):
            raise result
        return result

    @classmethod
    def step_all(cls, envs: Sequence[Env], actions: Sequence[str]) -> list[StepResult | Exception]:
        """One world-model call for every game's move (games of one world model each call). A
        world model that fails fails the games it was imagining, as a broken environment would."""
        games = [env for env in envs if isinstance(env, ImaginedGame)]
        if len(games) != len(envs) or any(g.state is None for g in games):
            raise RuntimeError("imagined games step together after reset()")
        results: list[StepResult | Exception] = []
        outcomes: dict[int, Any] = {}
        for world in dict.fromkeys(g.world for g in games):
            mine = [i for i, g in enumerate(games) if g.world is world]
            try:
                imagined = world.imagine([games[i].state for i in mine], [actions[i] for i in mine])  # type: ignore[misc]
            except Exception as exc:
                outcomes.update((i, exc) for i in mine)
                continue
            outcomes.update(zip(mine, imagined, strict=True))
        for i, game in enumerate(games):
            outcome, state = outcomes[i], game.state
            assert state is not None
            if isinstance(outcome, Exception):
                results.append(outcome)
                continue
            observation = outcome.observation or ""
            game.state = state.after(actions[i], observation, game.world.config.history_turns)
            truncated = not outcome.done and state.turn >= game.max_turns
            # An episode's rewards sum to at most 1 in a real game; so they do in an imagined one.
            reward = min(max(outcome.reward, 0.0), 1.0 - game.paid)
            game.paid += reward
            results.append(StepResult(observation, reward, outcome.done, truncated, {"imagined": True}))
        return results
