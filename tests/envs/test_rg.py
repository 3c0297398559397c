"""The reasoning-gym adapter: any dataset by name, short prompts, and the guards on its known bugs."""

from __future__ import annotations

import dataclasses
import signal

import pytest

from lifelong.envs import get_spec, make
from lifelong.envs import rg as rg_adapter
from lifelong.errors import ConfigError, UnknownEnvError


def _entry(dataset: str, seed: int = 0, **config):
    env = make(f"rg:{dataset}", **config)
    return env, env.item_for(seed)


def test_featured_knobs_are_real_config_fields() -> None:
    for dataset, featured in rg_adapter.FEATURED.items():
        fields = {f.name for f in dataclasses.fields(rg_adapter._datasets()[dataset][1])}
        assert set(featured.knobs) <= fields, dataset


def test_featured_prompts_are_short() -> None:
    long_by_design = {"game_of_life_halting", "aiw", "maze"}  # a board, a story, a grid
    for dataset in rg_adapter.FEATURED:
        if dataset in long_by_design:
            continue
        env = make(f"rg:{dataset}")
        for seed in range(5):
            question = env.reset(seed=seed)[0]
            assert len(question) <= 160, (dataset, question)


def test_any_dataset_works_by_name_with_its_own_prompt() -> None:
    env = make("rg:basic_arithmetic", max_terms=2)
    obs, info = env.reset(seed=4)
    assert obs.startswith("Calculate") and env.step(info["answer"]).reward == 1.0
    assert not get_spec("rg:basic_arithmetic").listed  # reachable, not in the table


def test_unknown_and_excluded_datasets_say_why() -> None:
    with pytest.raises(UnknownEnvError, match="unknown reasoning-gym dataset") as err:
        get_spec("rg:chain_sun")
    assert "rg:chain_sum" in err.value.fix
    with pytest.raises(UnknownEnvError, match="left out"):
        get_spec("rg:composite")


def test_bad_difficulty_values_are_refused_at_make() -> None:
    with pytest.raises(ConfigError, match="wrong type"):
        make("rg:chain_sum", max_terms="three")
    with pytest.raises(ConfigError, match="cannot generate"):
        make("rg:chain_sum", min_terms=4, max_terms=2)  # the library's own validation


def test_puzzle24_checker_requires_the_puzzle_numbers() -> None:
    env, item = _entry("puzzle24", seed=1)
    a, b, c, d = item.hidden["metadata"]["numbers"]
    assert env.score(item.hidden["answer"], item) == 1.0
    assert env.score("4 * 6", item) == 0.0  # 24 without the puzzle's numbers: scored 1.0 upstream
    assert env.score(f"{a} + {b} + {c} + {d}", item) == float(a + b + c + d == 24)
    assert env.score("__import__('os')", item) == 0.0


def test_game_of_life_halting_checker_wants_the_right_boolean() -> None:
    env, item = _entry("game_of_life_halting", seed=2)
    right = str(item.hidden["answer"])
    wrong = "False" if right == "True" else "True"
    assert env.score(right, item) == 1.0
    assert env.score(wrong, item) == 0.0
    assert env.score("anything at all", item) == 0.0  # upstream scored every non-empty answer 1.0


def test_prime_factorization_does_not_raise_and_gives_fair_partial_credit() -> None:
    env, item = _entry("prime_factorization", seed=0, min_value=12, max_value=12)
    assert env.score("2 × 2 × 3", item) == 1.0
    assert env.score("3, 2, 2", item) == 1.0
    assert env.score("4 × 3", item) == 0.5  # right product, not all prime
    assert env.score("12", item) == 0.0  # the number itself is not a factorization
    assert env.score("twelve", item) == 0.0  # upstream raises on this


def test_base_conversion_with_one_base_is_refused_not_looped() -> None:
    def timeout(*_: object) -> None:
        raise AssertionError("base_conversion looped")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(10)
    try:
        with pytest.raises(ConfigError, match="never finishes"):
            make("rg:base_conversion", min_base=5, max_base=5)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_small_mazes_are_refused() -> None:
    with pytest.raises(ConfigError, match="4x4"):
        make("rg:maze", min_grid_size=3, max_grid_size=3)
    with pytest.raises(ConfigError, match="cannot generate"):
        make("rg:maze", min_grid_size=4, max_grid_size=4, min_dist=9, max_dist=10)


def test_format_consolation_is_not_reward() -> None:
    env, item = _entry("fraction_simplification")  # upstream gives 0.01 to any wrong answer
    assert env.score("%%garbage%%", item) == 0.0
    assert env.score(item.hidden["answer"], item) == 1.0


def test_items_come_from_the_seed_alone() -> None:
    a = make("rg:chain_sum").reset(seed=123_456_789)[0]
    b = make("rg:chain_sum").reset(seed=123_456_789)[0]
    assert a == b
    # word_ladder precomputes per index: seeds far above its size still work
    assert make("rg:word_ladder").reset(seed=1_000_000_007)[0]


def test_featured_datasets_take_the_rest_of_their_config_too() -> None:
    obs = make("rg:word_sorting", transformation="uppercase").reset(seed=3)[0]
    words = obs.split(": ")[1].split(", ")
    assert all(w == w.upper() for w in words)
    with pytest.raises(ConfigError, match="no difficulty knob max_wrds") as err:
        make("rg:word_sorting", max_wrds=3)
    assert "max_words" in err.value.fix
    with pytest.raises(ConfigError, match="not allowed") as err:
        make("rg:word_sorting", transformation="bogus")
    assert "'uppercase'" in err.value.fix
