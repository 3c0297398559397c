"""`lifelong eval` end to end on the tiny model: the report folder, its figures and its JSON line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import assert_rerun_only_resumes, png_size, tiny_eval_args

from lifelong.cli import main
from lifelong.evaluate.compare import _sampling_note

REQUIRED = {"ACC", "BWT", "FWT", "forgetting", "online_acc", "general_delta", "episodes_per_min"}


def test_eval_writes_a_report_and_reuses_finished_runs(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    args = tiny_eval_args(tiny_model_dir, out)
    assert main(args) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["stream"] == "add+letter" and set(line["methods"]) == {"frozen", "grpo"}
    for summary in line["methods"].values():
        assert set(summary) >= REQUIRED and "learning_accuracy" in summary

    details = json.loads((out / "results.json").read_text())["details"]
    frozen = details["frozen"]["R"]
    assert len(frozen) == 3 and all(len(row) == 2 for row in frozen)
    assert frozen[1] == frozen[0] == frozen[2]  # weights never change, greedy probes: the same scores
    assert line["methods"]["frozen"]["BWT"] == 0.0

    page = (out / "index.html").read_text()
    figures = ["curves.png", "forgetting.png", "drift.png", "matrix_frozen.png", "matrix_grpo.png"]
    for name in figures:
        assert f'src="{name}"' in page
        width, height = png_size(out / name)
        assert width >= 300 and height >= 150, (name, width, height)
    assert "Learning each new task" in page and "one item is 33.3 points" in page

    assert_rerun_only_resumes([out / "runs" / m for m in ("frozen", "grpo")], lambda: main(args))


def test_sampling_note_shrinks_with_more_probes() -> None:
    assert "one item is 3.1 points" in _sampling_note(32, 5)
    assert "about 8.8 points" in _sampling_note(32, 5) and "about 4.4 points" in _sampling_note(128, 5)
