from __future__ import annotations

import pytest

from lifelong.envs import get_spec, make
from lifelong.envs.base import last_number, normalize_word
from lifelong.errors import ConfigError, UnknownEnvError


def test_unknown_environment_lists_close_names() -> None:
    with pytest.raises(UnknownEnvError, match="unknown environment 'ad'") as err:
        get_spec("ad")
    assert "add" in err.value.fix


def test_unknown_knob_lists_the_knobs() -> None:
    with pytest.raises(ConfigError, match="no difficulty knob") as err:
        make("add", max_val=3)
    assert "max_value" in err.value.fix


def test_bad_difficulty_value_is_refused() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        make("add", max_value=0)
    with pytest.raises(ConfigError, match="position"):
        make("letter", position="middle")


def test_answer_parsing_helpers() -> None:
    assert last_number("12 + 7 = 19.") == "19"
    assert last_number("1,234") == "1234"
    assert last_number("none") is None
    assert normalize_word(' "Apple". ') == "apple"


def test_item_key_is_the_question() -> None:
    env = make("add", max_value=5)
    assert env.item_key(3) == env.reset(seed=3)[0]
