"""The built-in multi-turn games: moves change what the agent sees, progress earns partial credit."""

from __future__ import annotations

import pytest

from lifelong.envs import make
from lifelong.envs.base import PARTIAL_CREDIT, with_turn_credit
from lifelong.envs.games import GridMaze, GuessNumber, Wordle, _marks, parse_direction
from lifelong.errors import ConfigError


def _finish(env, actions: list[str]):
    result = None
    for action in actions:
        result = env.step(action)
        if result.terminated or result.truncated:
            break
    return result


def test_guess_number_hints_follow_the_guesses_and_narrow_the_range() -> None:
    env = GuessNumber(max_value=16, max_turns=6)
    _, info = env.reset(seed=1)
    secret, low = int(info["answer"]), env.low
    first = env.step(str(low))  # the bottom of the window: higher (unless it is the secret)
    if secret != low:
        assert "higher" in first.observation and f"from {low + 1} to" in first.observation
        assert first.reward == 0.0 and not first.terminated


def test_guess_number_partial_credit_for_narrowing_but_not_for_garbage() -> None:
    env = GuessNumber(max_value=16, max_turns=5)
    _, info = env.reset(seed=2)
    secret = int(info["answer"])
    wrong = env.low if secret != env.low else env.high  # narrows the range by one number
    result = _finish(env, [str(wrong)] * 5)
    assert result.truncated and 0.0 < result.reward < PARTIAL_CREDIT
    env.reset(seed=2)
    assert _finish(env, ["no idea"] * 5).reward == 0.0


def test_guess_number_needs_enough_turns_for_binary_search() -> None:
    with pytest.raises(ConfigError, match="too few") as err:
        GuessNumber(max_value=100, max_turns=3)
    assert "max_turns >= 7" in err.value.fix


def test_wordle_marks_count_repeated_letters_like_wordle() -> None:
    assert _marks("apple", "apple") == "GGGGG"
    assert _marks("paper", "apple") == "YYGY-"  # the second 'p' is green, so the first is yellow
    assert _marks("eagle", "apple") == "-Y-GG"  # a-p-p-l-e: 'a' elsewhere, 'l','e' in place


def test_wordle_feedback_narrows_the_candidates() -> None:
    env = Wordle(choices=4)
    _, info = env.reset(seed=5)
    wrong = next(w for w in env.candidates if w != info["answer"])
    result = env.step(wrong)
    assert wrong in result.observation and "Still possible:" in result.observation
    assert wrong not in result.observation.split("Still possible:")[1]
    assert info["answer"] in result.observation.split("Still possible:")[1]


def test_wordle_without_choices_and_bad_knobs() -> None:
    obs, _ = Wordle(choices=0).reset(seed=1)
    assert "one of" not in obs
    with pytest.raises(ConfigError, match="gives the word away"):
        Wordle(choices=1)
    with pytest.raises(ConfigError, match="length"):
        make("wordle", length=7)


def test_maze_observation_moves_with_the_agent() -> None:
    env = GridMaze(size=4)
    first, info = env.reset(seed=3)
    step = env.step(info["solution"][0])
    assert step.observation.count("@") == 1 and step.observation != first
    assert len(info["solution"]) >= GridMaze.MIN_STEPS  # the agent acts at least three times


def test_maze_walls_block_and_progress_earns_partial_credit() -> None:
    env = GridMaze(size=5, max_turns=10)
    _, info = env.reset(seed=11)
    path = info["solution"]
    result = _finish(env, [path[0]] + ["%%"] * 9)  # one good step, then nothing
    assert result.truncated and 0.0 < result.reward < PARTIAL_CREDIT


def test_directions_are_read_from_short_or_chatty_answers() -> None:
    assert parse_direction("Move right.") == "right"
    assert parse_direction("u") == "up"
    assert parse_direction("I think I should go north") == "up"
    assert parse_direction("a duck") is None  # single letters count only on their own


@pytest.mark.parametrize("name", ["guess_number", "wordle", "maze"])
def test_a_finished_game_refuses_more_moves(name: str) -> None:
    env = make(name)
    _, info = env.reset(seed=0)
    _finish(env, info["solution"])
    with pytest.raises(RuntimeError, match="reset"):
        env.step("x")


def test_turn_credit_pays_progress_on_the_move_that_made_it() -> None:
    """One good maze step, then nothing: without turn credit the last move is paid for the first
    one's progress; with it the first move is paid, and the episode sums to the same."""
    moves = None
    totals, rewards = {}, {}
    for credit in (False, True):
        env = make("maze", size=5, max_turns=6, turn_credit=credit)
        _, info = env.reset(seed=11)
        moves = moves or [info["solution"][0]] + ["%%"] * 5
        rewards[credit] = [env.step(m).reward for m in moves]
        totals[credit] = sum(rewards[credit])
        assert 0.0 < totals[credit] < PARTIAL_CREDIT
    assert rewards[False][0] == 0.0 and rewards[False][-1] == totals[False]
    assert rewards[True][0] == totals[True] and rewards[True][1:] == [0.0] * 5
    assert totals[True] == pytest.approx(totals[False], abs=1 / 2048)


def test_turn_credit_keeps_the_best_progress_and_a_win_sums_to_one() -> None:
    env = make("maze", size=5, max_turns=8, turn_credit=True)
    _, info = env.reset(seed=11)
    forward = info["solution"][0]
    back = {"up": "down", "down": "up", "left": "right", "right": "left"}[forward]
    gained = env.step(forward)
    assert gained.reward > 0 and gained.info["progress"] > 0
    lost = env.step(back)  # ground lost is not taken back, and not paid again when regained
    assert lost.reward == 0.0 and lost.info["progress"] == gained.info["progress"]
    assert env.step(forward).reward == 0.0
    total = gained.reward
    for move in info["solution"][1:]:
        result = env.step(move)
        total += result.reward
    assert result.terminated and result.info["outcome"] == "won" and total == 1.0


def test_turn_credit_is_a_knob_of_games_only_and_needs_progress() -> None:
    with pytest.raises(ConfigError, match="no difficulty knob turn_credit"):
        make("add", turn_credit=True)
    with pytest.raises(ConfigError, match="true or false"):
        make("maze", turn_credit="yes")
    for game in ("ta:Secretary-v0", "ta:Nim-v0"):  # games that cannot say how far the agent got
        with pytest.raises(ConfigError, match="no difficulty knob turn_credit"):
            make(game, turn_credit=True)
    with pytest.raises(ConfigError, match="cannot say how far the agent got"):
        with_turn_credit(make("ta:Nim-v0"))
