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


def test_a_self_teacher_reads_the_fact_as_recall_puts_it(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--teacher exchange|document`: the student is the teaching question as measured, the teacher
    the same with the fact recalled (a taught exchange, or a quoted passage); the sweep runs with it."""
    from lifelong.model.loading import load_model
    from lifelong.model.policy import Policy

    model, tokenizer, name = load_model(str(tiny_model_dir))
    policy = Policy(model, tokenizer, name=name)
    fact = frontier.make_facts(2, 2, 0)[0]
    for form, shown in (("exchange", fact.answer), ("document", fact.statement)):
        (lesson,) = frontier.self_taught(policy, [fact], form)
        student, teacher = tokenizer.decode(lesson.student_prompt), tokenizer.decode(lesson.teacher_prompt)
        assert fact.teach in student and shown not in student and shown in teacher
        assert not lesson.protocol and not lesson.successes
    argv = ["--model", str(tiny_model_dir), "--facts", "4", "--steps", "1", "--threads", "1", "--general-items", "2",
            "--units", "memory", "--lrs", "memory=2e-4", "--teacher", "exchange", "--teacher-contrast", "1",
            "--frozen-teacher", "--out", str(tmp_path), "--json"]  # fmt: skip
    assert frontier.main(argv) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["teacher"] == "exchange" and line["teacher_contrast"] == 1.0 and line["frozen_teacher"]
    assert 0.0 <= line["units"]["memory"][0]["new"] <= 1.0
    # --teacher-labels: NLL of the teacher's own greedy answers, how many were right reported
    argv[argv.index("--frozen-teacher")] = "--teacher-labels"
    assert frontier.main(argv) == 0
    point = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["units"]["memory"][0]
    assert 0.0 <= point["labels_right"] <= 1.0
