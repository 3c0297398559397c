"""benchmarks/frontier.py: one sweep point per unit end to end on the tiny model, and its JSON line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.benchmarks.conftest import load_benchmark

frontier = load_benchmark("frontier")


def test_the_frontier_runs_every_unit_and_ends_with_its_json_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model", str(tiny_model_dir), "--facts", "4", "--steps", "2", "--threads", "1", "--general-items", "4",
            "--lrs", "full=1e-3;lora=1e-2;memory=2e-4", "--out", str(tmp_path), "--json"]  # fmt: skip
    assert frontier.main(argv) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(line["units"]) == {"full", "lora", "memory"}
    for points in line["units"].values():
        (point,) = points
        assert {"lr", "new", "general_loss", "earlier_loss", "general_questions_loss"} <= set(point)
        assert 0.0 <= point["new"] <= 1.0 and -1.0 <= point["general_loss"] <= 1.0
    assert (tmp_path / "frontier.png").stat().st_size > 0
