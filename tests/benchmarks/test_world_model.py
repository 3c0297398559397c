"""benchmarks/world_model.py end to end on the tiny model: three runs, the planner, one row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tests.benchmarks.conftest import load_benchmark

from lifelong.model import loading


def test_one_seed_of_one_game_gives_the_issues_row(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_benchmark("world_model")
    tiny = loading.load_model

    def load_tiny(model: str | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
        return tiny(str(tiny_model_dir))

    monkeypatch.setattr(bench, "load_model", load_tiny)
    monkeypatch.setattr(loading, "load_model", load_tiny)  # the world model's own copy
    argv = ["world_model.py", "--games", "maze", "--seeds", "1", "--budget", "8", "--heldout", "2",
            "--world-updates", "1", "--imagined", "2", "--threads", "1", "--quiet", "--json",
            "--out", str(tmp_path)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["games"][0]
    assert set(row) >= {"game", "wm_accuracy", "copy_accuracy", "grpo", "aux", "plan", "dyna", "turns"}
    assert row["game"].startswith("maze(")  # the label says the knobs the benchmark plays it at
    assert all(0.0 <= row[k] <= 1.0 for k in ("wm_accuracy", "copy_accuracy", "grpo", "aux", "plan", "dyna", "turns"))
    run = tmp_path / "seed0" / "maze"
    assert (run / "grpo" / "world").is_dir() and (run / "dyna" / "world").is_dir()
    assert not (run / "aux" / "world").exists()  # the auxiliary term needs no world model of its own
    assert not (run / "turns" / "world").exists()
    turns = json.loads((run / "turns" / "config.json").read_text())
    assert turns["grpo"]["turn_advantages"] and "turn_credit" in str(turns["stream"])
    saved = json.loads((run / "world_row.json").read_text())
    assert saved["heldout_moves"] > 0 and saved["imagined_moves_per_real_move"] >= 1
