"""benchmarks/unstuck.py --no-answer: its methods, and the committed hard stream."""

from __future__ import annotations

from tests.benchmarks.conftest import load_benchmark

from lifelong.loop.curriculum import CurriculumConfig
from lifelong.loop.explore import ExplorationConfig
from lifelong.streams.defaults import get_stream

unstuck = load_benchmark("unstuck")


def test_the_methods_differ_only_in_what_the_issue_compares() -> None:
    methods = unstuck.no_answer_methods(ablation=True)
    assert list(methods)[:5] == ["frozen", "grpo", "grpo_curriculum", "lifelong_no_answer", "lifelong_answer"]
    assert methods["grpo_curriculum"] == ("grpo", {"curriculum": CurriculumConfig(enabled=True)})
    preset, full = methods["lifelong_no_answer"]
    assert preset == "lifelong" and "lessons_with_answer" not in full
    assert full["exploration"] == ExplorationConfig(enabled=True) and full["reflection"] is True
    assert methods["lifelong_answer"] == ("lifelong", {"lessons_with_answer": True})
    for part in ("curriculum", "exploration", "reflection"):  # each ablation drops exactly its part
        assert set(full) - set(methods[f"lifelong_no_answer-{part}"][1]) == {part}
    one_level = CurriculumConfig(enabled=True, halfway=False)
    assert methods["grpo_curriculum-one_level"] == ("grpo", {"curriculum": one_level})
    assert len(unstuck.no_answer_methods(ablation=False)) == 5


def test_the_hard_stream_has_six_tasks_at_64_probes() -> None:
    stream = get_stream(str(unstuck.HARD_STREAM))
    assert len(stream.tasks) >= 6 and stream.probe_size == 64
    assert any(t.env.startswith("rg:") for t in stream.tasks) and any(":" not in t.env for t in stream.tasks)
