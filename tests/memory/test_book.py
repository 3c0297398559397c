from __future__ import annotations

from pathlib import Path

from lifelong.memory.book import MemoryBook, MemoryConfig, correction, notes, similarity
from lifelong.memory.store import ExperienceStore
from lifelong.types import Completion, Episode, StopReason, Turn


def _ep(
    question: str, answer: str, success: bool, truth: str = "19", eid: str = "e1", reward: float | None = None
) -> Episode:
    c = Completion((1,), (0.0,), (1,), "", answer, StopReason.ANSWERED)
    info = {"answer": truth}
    r = float(success) if reward is None else reward
    return Episode(eid, "add", 3, (Turn((1,), c, question, r),), r, success, info, 0, "g")


def test_similarity_prefers_the_same_question() -> None:
    assert similarity("What is 12 + 7?", "What is 12 + 7?") == 1.0
    assert similarity("What is 12 + 7?", "What is 12 + 9?") > similarity("What is 12 + 7?", "Spell cat")


def test_lessons_carry_the_correction_and_their_provenance(tmp_path: Path) -> None:
    book = MemoryBook(ExperienceStore(tmp_path / "s.sqlite"))
    item = book.add_lesson(_ep("What is 12 + 7?", "15", False, eid="failed-1"), with_answer=True)
    assert '"15" was wrong' in item.text and "expected answer was 19" in item.text
    assert item.provenance == ("failed-1",) and item.kind == "lesson"
    assert book.retrieve("add", "What is 12 + 7?") == [item]
    assert book.retrieve("other-task", "What is 12 + 7?") == []
    assert notes([item]).startswith("Note: Earlier")


def test_a_lesson_without_the_answer_keeps_the_attempt_and_the_reward(tmp_path: Path) -> None:
    book = MemoryBook(ExperienceStore(tmp_path / "s.sqlite"))
    item = book.add_lesson(_ep("What is 12 + 7?", "15", False, truth="19"), with_answer=False)
    assert item.text == 'Earlier, for "What is 12 + 7?" the answer "15" was wrong.' and "19" not in item.text
    partial = _ep("Spell it.", "tac", False, truth="cat", reward=0.25)
    assert correction(partial, with_answer=False) == "It earned 0.25 of 1."


def test_env_feedback_wins_over_the_ground_truth() -> None:
    ep = _ep("q", "a", False)
    ep.info["feedback"] = "Too high."
    assert correction(ep, with_answer=True) == correction(ep, with_answer=False) == "Too high."


def test_the_same_lesson_is_not_stored_twice(tmp_path: Path) -> None:
    book = MemoryBook(ExperienceStore(tmp_path / "s.sqlite"))
    a = book.add_lesson(_ep("What is 1 + 1?", "3", False), with_answer=True)
    b = book.add_lesson(_ep("What is 1 + 1?", "3", False, eid="e2"), with_answer=True)
    assert a == b and len(book.items()) == 1


def test_capacity_forgets_the_least_useful_item_and_logs_each_edit(tmp_path: Path) -> None:
    store = ExperienceStore(tmp_path / "s.sqlite")
    book = MemoryBook(store, MemoryConfig(capacity=2))
    useful = book.add_lesson(_ep("What is 1 + 1?", "3", False, truth="2"), with_answer=True)
    useless = book.add_lesson(_ep("What is 2 + 2?", "5", False, truth="4"), with_answer=True)
    book.record([useful], won=True)
    book.record([useless], won=False)
    book.add_example(_ep("What is 3 + 3?", "6", True, truth="6"))
    kept = {i.key for i in book.items()}
    assert kept == {"What is 1 + 1?", "What is 3 + 3?"}
    ops = [(op, detail.get("reason")) for op, _, detail in store.memory_edits()]
    assert ("forget", "capacity") in ops and ops.count(("add", None)) == 3


def test_explicit_forgetting(tmp_path: Path) -> None:
    book = MemoryBook(ExperienceStore(tmp_path / "s.sqlite"))
    item = book.add_lesson(_ep("q one", "x", False), with_answer=False)
    assert book.forget(item.id, "user asked")
    assert not book.forget(item.id)
    assert book.items() == []
