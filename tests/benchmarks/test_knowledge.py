"""benchmarks/knowledge.py: its facts cannot be known, its measuring questions are a family no
teaching sees, and its scoring takes the first word only."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tests.benchmarks.conftest import load_benchmark

from lifelong.loop.memory_lessons import DOCUMENT_TEMPLATES, QUESTION_TEMPLATES

knowledge = load_benchmark("knowledge")


def words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def test_facts_are_made_up_distinct_and_spread_over_batches() -> None:
    facts = knowledge.make_facts(100, 5, seed=0)
    assert len(facts) == 100
    names = [f.subject.lower() for f in facts] + [f.answer.lower() for f in facts]
    assert len(set(names)) == 200  # no subject or answer twice: a question has one right answer
    for b in range(5):
        batch = [f for f in facts if f.batch == b]
        assert len(batch) == 20 and {f.kind for f in batch} == {k.name for k in knowledge.KINDS}
    assert knowledge.make_facts(100, 5, seed=0) == facts and knowledge.make_facts(100, 5, seed=1) != facts
    for f in facts:
        assert f.answer in f.statement and f.subject in f.statement and f.subject in f.teach
        assert len(set(f.paraphrases)) == 3 and all(f.subject in p for p in f.paraphrases)


def test_measuring_questions_are_a_family_teaching_and_consolidation_never_ask() -> None:
    for f in knowledge.make_facts(100, 5, seed=0):
        taught = {words(f.teach)}
        taught |= {words(t.format(question=f.teach)) for t in QUESTION_TEMPLATES}
        taught |= {words(t.format(phrase=f.subject)) for t in DOCUMENT_TEMPLATES}
        for p in f.paraphrases:
            assert words(p) not in taught
            assert words(f.teach) not in words(p)  # not the taught question wrapped in other words


def test_a_reply_scores_on_its_first_word_only() -> None:
    assert (
        knowledge.accuracy(["Quastik.", "quastik is the capital", "The capital is Quastik"], ["Quastik"] * 3) == 2 / 3
    )
    assert knowledge.accuracy(["Brell, Quastik, Vorn"], ["Quastik"]) == 0.0  # reciting notes does not score


def test_a_batch_document_states_each_fact_once() -> None:
    facts = knowledge.make_facts(10, 2, seed=3)
    text = knowledge.document_text(0, [f for f in facts if f.batch == 0])
    assert all(text.count(f.statement) == 1 for f in facts if f.batch == 0)
    assert not any(f.answer in text for f in facts if f.batch == 1)


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end_on_a_tiny_model(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    code = knowledge.main(["--model", str(tiny_model_dir), "--facts", "4", "--batches", "2", "--methods",
                           "memory,lifelong", "--out", str(tmp_path), "--json"])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["facts"] == 4 and set(result["methods"]) == {"memory", "lifelong"}
    for channel in ("correction", "document"):
        row = result["channels"][channel]["memory"]
        assert set(knowledge.KEYS) <= set(row) and row["other_tenant_changed"] == 0
        assert row["recall_exact"] == 1.0  # the taught question finds its own item
    assert (tmp_path / "knowledge.md").exists() and (tmp_path / "knowledge_matrix.png").stat().st_size > 0
