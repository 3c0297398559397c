"""Stream YAML files: a typo is one clear error that says where it is and what was meant."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lifelong.errors import ConfigError, UnknownEnvError
from lifelong.streams.defaults import STREAMS, get_stream
from lifelong.streams.loader import load_stream_file, parse_stream
from lifelong.streams.stream import Stage, Stream, Task

GOOD = """
name: numbers-then-words
description: a small stream
probe_size: 16
stages:
  - env: add
    params: {max_value: 10}
    episodes: 64
  - env: rg:spell_backward
    params: {max_word_len: 4}
    episodes: 32
  - env: guess_number
    episodes: 32
general: [facts, {env: instruct}]
"""


def _write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_stream_file_loads_into_a_checked_stream(tmp_path: Path) -> None:
    stream = load_stream_file(_write(tmp_path, GOOD))
    assert stream.name == "numbers-then-words" and stream.probe_size == 16
    assert [s.task.label for s in stream.stages] == [
        "add(max_value=10)",
        "rg:spell_backward(max_word_len=4)",
        "guess_number",
    ]
    assert [s.episodes for s in stream.stages] == [64, 32, 32]
    assert stream.general == (Task.of("facts"), Task.of("instruct"))


def test_the_name_defaults_to_the_file_name(tmp_path: Path) -> None:
    stream = load_stream_file(_write(tmp_path, "stages: [{env: add, episodes: 8}]", "my_stream.yml"))
    assert stream.name == "my_stream" and stream.probe_size == 48


def test_to_dict_round_trips_through_yaml(tmp_path: Path) -> None:
    stream = load_stream_file(_write(tmp_path, GOOD))
    again = load_stream_file(_write(tmp_path, yaml.safe_dump(stream.to_dict()), "again.yaml"))
    assert again == stream


@pytest.mark.parametrize(
    ("text", "error", "problem", "fix"),
    [
        ("stages: [{env: add, episodes: 8}]\nprobe_sise: 8", ConfigError, "unknown key 'probe_sise'", "probe_size"),
        ("stages: [{env: add, episode: 8}]", ConfigError, "stage 1: unknown key 'episode'", "episodes"),
        ("stages: [{env: add, parms: {max_value: 3}, episodes: 8}]", ConfigError, "unknown key 'parms'", "params"),
        ("stages: [{env: ad, episodes: 8}]", UnknownEnvError, "stage 1: unknown environment 'ad'", "add"),
        ("stages: [{env: rg:chain_sun, episodes: 8}]", UnknownEnvError, "stage 1", "rg:chain_sum"),
        ("stages: [{env: add, params: {max_value: 0}, episodes: 8}]", ConfigError, "max_value=0", "1 to"),
        ("stages: [{env: add, params: {max_val: 3}, episodes: 8}]", ConfigError, "no difficulty knob", "max_value"),
        ("stages: [{env: letter, params: {position: middle}, episodes: 8}]", ConfigError, "middle", "'first'"),
        ("stages: [{env: add, episodes: 0}]", ConfigError, "episodes must be a positive", "episodes:"),
        ("stages: [{env: add}]", ConfigError, "missing 'episodes'", "episodes"),
        ("stages: []", ConfigError, "non-empty list", "stages"),
        ("stages: [{env: add, episodes: 8}]\ngeneral: [factz]", UnknownEnvError, "general 1", "facts"),
        ("stages: [{env: add, episodes: 8}]\nprobe_size: lots", ConfigError, "probe_size", "probe_size: 48"),
    ],
)
def test_each_mistake_is_one_clear_error(tmp_path: Path, text: str, error: type, problem: str, fix: str) -> None:
    with pytest.raises(error) as err:
        load_stream_file(_write(tmp_path, text))
    assert problem in err.value.problem and fix in err.value.fix
    assert str(tmp_path / "s.yaml") in err.value.problem  # says which file


def test_broken_yaml_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML at line 3"):
        load_stream_file(_write(tmp_path, "stages:\n  - env: add\n episodes: 8\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        get_stream(str(tmp_path / "nope.yaml"))


def test_named_streams_and_files_share_one_lookup(tmp_path: Path) -> None:
    assert get_stream("demo") is STREAMS["demo"]
    assert get_stream(str(_write(tmp_path, GOOD))).name == "numbers-then-words"
    with pytest.raises(ConfigError, match="unknown stream 'defualt'") as err:
        get_stream("defualt")
    assert "default" in err.value.fix


def test_parse_checks_plain_data_too() -> None:
    stream = parse_stream({"stages": [{"env": "add", "episodes": 4}]})
    assert stream == Stream("stream", (Stage(Task.of("add"), 4),))


def test_turn_credit_reaches_the_games_of_a_stream_only() -> None:
    stream = parse_stream(yaml.safe_load(GOOD))
    credited = stream.with_turn_credit()
    labels = [s.task.label for s in credited.stages]
    assert labels[:2] == [s.task.label for s in stream.stages[:2]]  # single-turn tasks as they were
    assert labels[2] == "guess_number(turn_credit=True)" and credited.stages[2].task.make().turn_credit
    assert Stream.from_dict(credited.to_dict()) == credited  # it travels in config.json
    assert credited.with_turn_credit() == credited  # a stream already paying it stays as it is
    with pytest.raises(ConfigError, match="can pay turn credit"):
        Stream("words", (Stage(Task.of("add"), 8),)).with_turn_credit()
    written = parse_stream(
        yaml.safe_load(
            GOOD.replace("  - env: guess_number\n", "  - env: guess_number\n    params: {turn_credit: true}\n")
        )
    )
    assert written.stages[2].task == credited.stages[2].task
