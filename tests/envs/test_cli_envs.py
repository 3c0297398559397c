"""`lifelong envs` and `lifelong play`: the catalog as a table or JSON, and a game on stdin."""

from __future__ import annotations

import io
import json

import pytest

from lifelong.cli import main
from lifelong.envs import make


def test_envs_json_lists_the_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert len(listed) >= 25
    assert all({"name", "source", "multi_turn", "knobs"} <= set(e) for e in listed)
    assert {e["source"] for e in listed} >= {"built-in", "reasoning-gym", "textarena"}
    assert sum(e["multi_turn"] for e in listed) >= 3


def test_envs_table_shows_turns_and_knobs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envs"]) == 0
    out = capsys.readouterr().out
    assert "guess_number" in out and "multi" in out and "max_value=16" in out
    assert "rg:<dataset>" in out  # how to reach what is not listed


def _play(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], lines: list[str]):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{line}\n" for line in lines)))
    code = main(["play", *args])
    return code, capsys.readouterr().out


def test_play_a_game_from_piped_input(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _, info = make("guess_number", max_value=8).reset(seed=3)
    code, out = _play(monkeypatch, capsys, ["guess_number", "--seed", "3", "--knob", "max_value=8"], info["solution"])
    assert code == 0
    assert "Guess my number" in out and "You win!" in out
    assert "reward 1.00 (solved)" in out


def test_play_with_turn_credit_shows_each_move_s_pay(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, info = make("maze").reset(seed=3)
    knobs = ["--knob", "turn_credit=true"]
    code, out = _play(monkeypatch, capsys, ["maze", "--seed", "3", *knobs], info["solution"])
    assert code == 0 and out.count("(+0.") >= 1 and "reward 1.00 (solved)" in out


def test_play_reports_a_lost_game_and_the_answer(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _play(monkeypatch, capsys, ["add", "--seed", "1"], ["no idea"])
    _, info = make("add").reset(seed=1)
    assert code == 0 and "reward 0.00 (not solved)" in out and f"answer: {info['answer']}" in out


def test_play_stops_cleanly_when_input_ends(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _play(monkeypatch, capsys, ["maze", "--seed", "2"], ["up"])
    assert code == 0 and "(no more input)" in out


def test_play_textarena_and_reasoning_gym(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("ta:Nim-v0", "rg:chain_sum"):
        env = make(name)
        _, info = env.reset(seed=4)
        moves = info.get("solution") or [info["answer"]]
        code, out = _play(monkeypatch, capsys, [name, "--seed", "4"], moves)
        assert code == 0 and "reward 1.00 (solved)" in out, out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["guess_numbr"], "did you mean guess_number"),
        (["add", "--knob", "max_val=3"], "no difficulty knob max_val"),
        (["add", "--knob", "max_value"], "is not NAME=VALUE"),
        (["add", "--knob", "max_value=0"], "max_value=0 is out of range"),
    ],
)
def test_play_bad_input_is_one_error_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["play", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
