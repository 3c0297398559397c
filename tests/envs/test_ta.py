"""The textarena adapter: compact observations, scripted opponents, its own random generator."""

from __future__ import annotations

import random

import pytest

from lifelong.envs import get_spec, make
from lifelong.envs import ta as ta_adapter
from lifelong.errors import ConfigError, UnknownEnvError

CURATED = [game.name for game in ta_adapter.CURATED]


@pytest.mark.parametrize("name", CURATED)
def test_observations_stay_compact_for_the_whole_game(name: str) -> None:
    env = make(name)
    obs, info = env.reset(seed=9)
    assert len(obs) <= 300, obs
    for action in info["solution"]:
        result = env.step(action)
        assert len(result.observation) <= 200, result.observation  # never the whole history


def test_global_random_is_neither_disturbed_nor_used() -> None:
    random.seed(42)
    expected = [random.random() for _ in range(3)]
    random.seed(42)
    env = make("ta:GuessTheNumber-v0")
    first = env.reset(seed=5)
    env.step("30")
    assert [random.random() for _ in range(3)] == expected  # textarena reseeds `random` on reset
    random.seed(999)  # whatever the learner does with `random` must not change the game
    assert make("ta:GuessTheNumber-v0").reset(seed=5) == first


def test_interleaved_games_do_not_share_randomness() -> None:
    def play(env, seed: int) -> list[str]:
        obs, info = env.reset(seed=seed)
        return [obs] + [env.step(a).observation for a in info["solution"]]

    alone = play(make("ta:Nim-v0"), 3)
    a, b = make("ta:Nim-v0"), make("ta:Nim-v0")
    obs_a, info_a = a.reset(seed=3)
    b.reset(seed=4)
    steps = []
    for action in info_a["solution"]:
        b.step("0 1")
        steps.append(a.step(action).observation)
    assert [obs_a, *steps] == alone


def test_scripted_opponents_depend_on_the_seed_only() -> None:
    for name in ("ta:Nim-v0", "ta:TicTacToe-v0", "ta:IteratedRockPaperScissors-v0"):
        env = make(name)
        _, info = env.reset(seed=12)
        first = [env.step(a).observation for a in info["solution"]]
        env.reset(seed=12)
        assert [env.step(a).observation for a in info["solution"]] == first


def test_plain_answers_become_textarena_moves() -> None:
    hanoi = make("ta:TowerOfHanoi-v0")
    assert hanoi.to_action("Move the top disk from A to C.") == "[A C]"
    assert hanoi.to_action("a c") == "[A C]"
    assert make("ta:Mastermind-v0").to_action("3 1 4") == "[3 1 4]"
    assert make("ta:FrozenLake-v0").to_action("Go down.") == "[down]"
    assert make("ta:IteratedRockPaperScissors-v0").to_action("Paper!") == "[paper]"


def test_a_lost_match_earns_nothing_and_a_partial_one_earns_partial_credit() -> None:
    env = make("ta:IteratedRockPaperScissors-v0", num_rounds=3, pattern=1)
    obs, info = env.reset(seed=1)
    theirs = obs.split("were: ")[1].split(",")[0]
    loses_to_theirs = {"rock": "scissors", "paper": "rock", "scissors": "paper"}[theirs]
    results = [env.step(loses_to_theirs) for _ in range(3)]
    assert results[-1].terminated and sum(r.reward for r in results) == 0.0
    env.reset(seed=1)
    win, tie = info["solution"][0], theirs
    results = [env.step(m) for m in (win, tie, tie)]  # 1-0 with two ties: the match is won
    assert results[-1].terminated and results[-1].reward == 1.0
    env.reset(seed=1)
    results = [env.step(m) for m in (win, loses_to_theirs, tie)]  # 1-1: a draw
    assert results[-1].terminated and results[-1].reward == pytest.approx(0.5 / 3)


def test_rock_paper_scissors_history_reveals_the_pattern() -> None:
    env = make("ta:IteratedRockPaperScissors-v0", pattern=1)
    obs, info = env.reset(seed=0)
    repeated = obs.split("were: ")[1].split(".")[0].split(", ")
    assert len(set(repeated)) == 1
    assert info["solution"] == [ta_adapter._BEATS[repeated[0]]] * 3


def test_hanoi_from_a_scrambled_start_gets_credit_only_for_its_own_progress() -> None:
    env = make("ta:TowerOfHanoi-v0", num_disks=3, max_turns=7)
    for seed in range(20):
        env.reset(seed=seed)
        if env.placed_at_start:  # the start already has disks in place on C
            break
    result = None
    for _ in range(7):
        result = env.step("nonsense")
        if result.terminated or result.truncated:
            break
    assert result is not None and result.reward == 0.0


def test_left_out_games_say_why() -> None:
    with pytest.raises(UnknownEnvError, match="network"):
        get_spec("ta:Wordle-v0")
    with pytest.raises(UnknownEnvError, match="online LLM"):
        get_spec("ta:TwentyQuestions-v0")
    with pytest.raises(UnknownEnvError, match="not a single-player game") as err:
        get_spec("ta:ConnectFour-v0")
    assert "ta:Nim-v0" in err.value.fix
    with pytest.raises(UnknownEnvError, match="unknown textarena game") as err:
        get_spec("ta:GuessTheNumbr-v0")
    assert "ta:GuessTheNumber-v0" in err.value.fix


def test_bad_knobs_are_refused() -> None:
    with pytest.raises(ConfigError, match="opponent"):
        make("ta:TicTacToe-v0", opponent="perfect")
    with pytest.raises(ConfigError, match="num_disks"):
        make("ta:TowerOfHanoi-v0", num_disks=1)


def test_blocker_opponent_is_still_beatable() -> None:
    env = make("ta:TicTacToe-v0", opponent="blocker")
    for seed in range(5):
        _, info = env.reset(seed=seed)
        result = None
        for action in info["solution"]:
            result = env.step(action)
        assert result is not None and result.reward == 1.0
