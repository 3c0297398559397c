"""One contract every registered environment must pass."""

from __future__ import annotations

import socket

import pytest

from lifelong.envs import env_specs, make
from lifelong.envs.base import Env

SPECS = env_specs()


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
        if result.terminated or result.truncated:
            done = True
            break
    return observations, total, done


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_environment_contract(spec) -> None:
    env = make(spec.name)
    obs, info = env.reset(seed=7)
    assert isinstance(obs, str) and obs
    assert "answer" in info, "info must carry the ground truth"
    # determinism per seed
    assert make(spec.name).reset(seed=7)[0] == obs
    assert any(make(spec.name).reset(seed=s)[0] != obs for s in range(8, 20))
    # the ground truth earns full reward; garbage earns none
    answers = info.get("solution") or [info["answer"]] * env.max_turns
    _, total, done = _play(make(spec.name), 7, list(answers))
    assert done and total >= env.success_threshold
    _, garbage, _ = _play(make(spec.name), 7, ["%%garbage%%"] * env.max_turns)
    assert garbage == 0.0
