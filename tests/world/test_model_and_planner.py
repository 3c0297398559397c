from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from tests.conftest import make_learnable_model
from transformers import PreTrainedTokenizerBase

from lifelong.envs.base import StepResult
from lifelong.envs.games import GridMaze
from lifelong.errors import ConfigError
from lifelong.loop.actor import Job, LocalActor
from lifelong.model.policy import GenerationConfig, LoraSettings, Policy
from lifelong.world.model import WorldModel, WorldModelConfig
from lifelong.world.planner import PlanConfig, Planner, plan_for_effort
from lifelong.world.transitions import GameState, Outcome, all_transitions


def world_model(tokenizer: PreTrainedTokenizerBase, seed: int = 1) -> WorldModel:
    policy = Policy(make_learnable_model(tokenizer, seed), tokenizer, name="world", lora=LoraSettings(rank=8, alpha=16))
    return WorldModel(policy, WorldModelConfig(prediction_tokens=12, learning_rate=3e-3, batch_size=8))


class CountingMaze(GridMaze):
    steps = 0

    def step(self, action: str) -> StepResult:
        CountingMaze.steps += 1
        return super().step(action)


def played(policy: Policy, decide=None, n: int = 3) -> list:  # type: ignore[no-untyped-def]
    actor = LocalActor(policy, lambda name: CountingMaze(), torch.Generator().manual_seed(0), decide)
    return actor.play([Job("maze", s) for s in range(n)], GenerationConfig("none", answer_tokens=4))


def test_the_world_model_learns_the_moves_it_saw(tiny_policy: Policy, tokenizer: PreTrainedTokenizerBase) -> None:
    moves = all_transitions(played(tiny_policy))
    world = world_model(tokenizer)
    reports = world.learn(moves, 30, random.Random(0))
    assert all(r.applied for r in reports)
    first, last = reports[0].metrics["loss/nll"], reports[-1].metrics["loss/nll"]
    assert last < 0.5 * first
    imagined = world.imagine([m.state for m in moves[:4]], [m.action for m in moves[:4]])
    assert len(imagined) == 4 and all(isinstance(o, Outcome) for o in imagined)


def test_a_saved_world_model_imagines_the_same_after_loading(
    tiny_policy: Policy, tokenizer: PreTrainedTokenizerBase, tmp_path: Path
) -> None:
    moves = all_transitions(played(tiny_policy, n=2))
    world = world_model(tokenizer)
    world.learn(moves, 5, random.Random(0))
    world.save(tmp_path / "world")
    again = world_model(tokenizer)
    again.load(tmp_path / "world")
    states, actions = [m.state for m in moves[:3]], [m.action for m in moves[:3]]
    assert again.imagine(states, actions) == world.imagine(states, actions)
    assert again.learner.step == 5
    with pytest.raises(ConfigError, match="no world model"):
        again.load(tmp_path / "elsewhere")


def test_the_planner_never_steps_the_real_game(tiny_policy: Policy, tokenizer: PreTrainedTokenizerBase) -> None:
    planner = Planner(tiny_policy, world_model(tokenizer), PlanConfig(width=3, depth=2))
    CountingMaze.steps = 0
    episodes = played(tiny_policy, planner.decide)
    assert CountingMaze.steps == sum(len(e.turns) for e in episodes)  # exactly one step per real move
    assert planner.plans == CountingMaze.steps and planner.imagined_moves >= planner.plans


class ScriptedWorld:
    """A world model that pays `reward(action)` and ends the game, or (None) replies `same`."""

    def __init__(self, reward, same: bool = False) -> None:  # type: ignore[no-untyped-def]
        self.config = WorldModelConfig()
        self.reward = reward
        self.same = same
        self.asked: list[str] = []

    def imagine(self, states: Sequence[GameState], actions: Sequence[str]) -> list[Outcome]:
        self.asked += actions
        if self.same:
            return [Outcome(s.observation, 0.0, False) for s in states]
        return [Outcome("over", self.reward(a), True) for a in actions]


def test_the_planner_plays_the_move_the_world_model_says_wins(tiny_policy: Policy) -> None:
    plans = []
    world = ScriptedWorld(lambda action: 1.0 if action == max(world.asked) else 0.0)
    planner = Planner(tiny_policy, world, PlanConfig(width=6), torch.Generator().manual_seed(0), plans.append)  # type: ignore[arg-type]
    state = GameState("maze", "Move @ to G.", (), 1, 8)
    context = tiny_policy.start(state.observation)
    chosen = planner.decide([context], [state], GenerationConfig("none", answer_tokens=4))
    lines = plans[0].lines
    assert len(lines) > 1, "six samples of a random model should give distinct moves"
    assert chosen[0].answer == max(line.actions[0] for line in lines)
    assert lines[plans[0].chosen].value == max(line.value for line in lines)


def test_without_a_foreseen_difference_the_greedy_move_is_played(tiny_policy: Policy) -> None:
    planner = Planner(
        tiny_policy, ScriptedWorld(None, same=True), PlanConfig(width=5), torch.Generator().manual_seed(0)
    )  # type: ignore[arg-type]
    state = GameState("maze", "Move @ to G.", (), 1, 8)
    context = tiny_policy.start(state.observation)
    gen = GenerationConfig("none", answer_tokens=4)
    greedy = tiny_policy.respond([context], GenerationConfig("none", answer_tokens=4, temperature=0.0))
    assert planner.decide([context], [state], gen)[0].answer == greedy[0].answer


def test_reasoning_effort_sets_width_and_depth() -> None:
    assert (plan_for_effort("none").width, plan_for_effort("high").width, plan_for_effort("high").depth) == (1, 8, 3)
    with pytest.raises(ConfigError, match="reasoning_effort"):
        plan_for_effort("extreme")
    with pytest.raises(ConfigError, match="width"):
        PlanConfig(width=0)
