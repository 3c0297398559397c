"""`lifelong run --stream FILE.yaml`: a stream file runs end to end; a typo in it is one error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifelong.cli import main

# One multi-turn stage (the runtime plays games turn by turn) and a general probe; kept to one
# update step because a run, even with the tiny model, is the slowest thing a test can do.
STREAM = """
name: tiny
probe_size: 2
stages:
  - env: guess_number
    params: {max_value: 4, max_turns: 3}
    episodes: 8
general: [facts]
"""


def test_a_stream_file_runs_with_its_general_probes(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = tmp_path / "tiny.yaml"
    stream.write_text(STREAM)
    args = ["run", "--model", str(tiny_model_dir), "--stream", str(stream), "--runs-dir", str(tmp_path)]
    args += ["--run-id", "r", "--quiet", "--threads", "1", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["tasks"] == ["guess_number(max_turns=3,max_value=4)"]
    assert set(summary["before"]) == {*summary["tasks"], "facts"}  # general probes are evaluated
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["stream"]["general"] == [{"env": "facts", "params": {}}]


def test_overriding_episodes_keeps_the_general_probes(tmp_path: Path) -> None:
    from lifelong.cli import _stream_from_args, build_parser

    stream = tmp_path / "tiny.yaml"
    stream.write_text(STREAM)
    args = build_parser().parse_args(["run", "--stream", str(stream), "--episodes", "16", "--probe-size", "3"])
    overridden = _stream_from_args(args)
    assert [s.episodes for s in overridden.stages] == [16] and overridden.probe_size == 3
    assert [t.env for t in overridden.general] == ["facts"]


def test_a_typo_in_a_stream_file_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stream = tmp_path / "typo.yaml"
    stream.write_text(STREAM.replace("episodes: 8", "epsiodes: 8"))
    assert main(["run", "--stream", str(stream), "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "stage 1: unknown key 'epsiodes'" in err[0] and "did you mean 'episodes'?" in err[0]
