"""One contract every registered environment must pass."""

from __future__ import annotations

import json
import random
import socket

import pytest

from lifelong.envs import env_specs, make
from lifelong.envs.base import Env

SPECS = env_specs()
# Names reached through a library prefix without being listed: they must keep the parts of the
# contract that need no ground truth.
UNLISTED = ["rg:basic_arithmetic", "rg:word_ladder", "ta:Secretary-v0"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("environment tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _play(env: Env, seed: int, actions: list[str]) -> tuple[list[str], float, bool]:
    obs, _ = env.reset(seed=seed)
    observations, total, done = [obs], 0.0, False
    for action in actions:
        result = env.step(action)
        total += result.reward
        observations.append(result.observation)
        assert 0.0 <= result.reward <= 1.0
        assert isinstance(result.observation, str)
        if result.terminated or result.truncated:
            done = True
            break
    assert 0.0 <= total <= 1.0, "an episode's rewards must sum to at most 1"
    return observations, total, done


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_environment_contract(spec) -> None:
    env = make(spec.name)
    outer = random.getstate()
    obs, info = env.reset(seed=7)
    assert isinstance(obs, str) and obs
    assert "answer" in info, "info must carry the ground truth"
    json.dumps(info)  # stored with the episode
    # determinism per seed
    assert make(spec.name).reset(seed=7)[0] == obs
    assert any(make(spec.name).reset(seed=s)[0] != obs for s in range(8, 20))
    assert env.item_key(7) == make(spec.name).item_key(7)
    # the ground truth earns full reward; garbage earns none
    answers = info.get("solution") or [info["answer"]] * env.max_turns
    observations, total, done = _play(make(spec.name), 7, list(answers))
    assert done and total >= env.success_threshold
    assert _play(make(spec.name), 7, list(answers))[0] == observations, "same seed, same moves, same observations"
    _, garbage, _ = _play(make(spec.name), 7, ["%%garbage%%"] * env.max_turns)
    assert garbage == 0.0
    # the learner's randomness is left alone
    assert random.getstate() == outer, "environment disturbed Python's global random"


@pytest.mark.parametrize("spec", [s for s in SPECS if s.multi_turn], ids=[s.name for s in SPECS if s.multi_turn])
def test_multi_turn_games_give_a_winning_solution(spec) -> None:
    env = make(spec.name)
    assert env.max_turns > 1
    for seed in range(5):
        _, info = env.reset(seed=seed)
        assert isinstance(info["solution"], list) and 1 <= len(info["solution"]) <= env.max_turns
        _, total, done = _play(make(spec.name), seed, info["solution"])
        assert done and total == 1.0


@pytest.mark.parametrize("name", UNLISTED)
def test_unlisted_library_names_are_seeded_and_offline(name: str) -> None:
    env = make(name)
    outer = random.getstate()
    obs, info = env.reset(seed=3)
    assert obs and "answer" in info
    assert make(name).reset(seed=3)[0] == obs
    _, garbage, _ = _play(make(name), 3, ["%%garbage%%"] * env.max_turns)
    assert garbage == 0.0
    assert random.getstate() == outer


def test_the_catalog_spans_three_sources_and_enough_games() -> None:
    sources = {s.source for s in SPECS}
    assert {"built-in", "reasoning-gym", "textarena"} <= sources
    assert len(SPECS) >= 25
    assert sum(s.multi_turn for s in SPECS) >= 3


CREDITED = [s for s in SPECS if "turn_credit" in s.knobs]


@pytest.mark.parametrize("spec", CREDITED, ids=[s.name for s in CREDITED])
def test_turn_credit_keeps_the_game_and_its_sums(spec) -> None:
    """With turn credit a game plays the same, a win still sums to 1 and garbage to 0."""
    for seed in range(3):
        _, info = make(spec.name).reset(seed=seed)
        plain = _play(make(spec.name), seed, info["solution"])
        credited = _play(make(spec.name, turn_credit=True), seed, info["solution"])
        assert credited[0] == plain[0] and credited[2]
        assert credited[1] == 1.0  # exactly: success is reward >= 1.0
    env = make(spec.name, turn_credit=True)
    assert _play(env, 7, ["%%garbage%%"] * env.max_turns)[1] == 0.0


def test_most_games_can_pay_turn_credit() -> None:
    assert {"guess_number", "wordle", "maze", "ta:TowerOfHanoi-v0", "ta:FrozenLake-v0"} <= {s.name for s in CREDITED}
