"""Consolidation of a serving tenant's memory into its adapter: lessons from memory items (questions
with and without the item), a guarded round that marks what it kept, the worker's triggers and the
`lifelong consolidate --store --tenant` command; a consolidated item deleted, then unlearned by the
next consolidation (the base model as teacher on its questions).

A random tiny model reads nothing from a quoted note, so what the teacher knows cannot make an
answer likelier here: the "answer got likelier" test learns by NLL on the item's known answer
(`CorrectionRule.NLL`, as tests/serve/test_learning.py does), the others by self-distillation."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from tests.conftest import FAST_LEARNING
from tests.loop.test_tenants import learner_for, serve_request

from lifelong.cli import main
from lifelong.errors import ConfigError
from lifelong.loop.memory_lessons import (
    DOCUMENT_TEMPLATES,
    QUESTION_TEMPLATES,
    absence_lessons,
    memory_lessons,
    paraphrases,
    salient_phrases,
)
from lifelong.loop.tenants import CorrectionRule, TenantLearner, reply_likelihood, reply_sample
from lifelong.memory.recall import DATA_MARK
from lifelong.memory.store import ExperienceStore
from lifelong.model.policy import LoraSettings, Policy
from lifelong.serve.config import LearnerConfig, ServeConfig
from lifelong.serve.worker import due_consolidations, learn_once
from lifelong.types import (
    AdapterRecord,
    AdapterStatus,
    DocumentRecord,
    FeedbackKind,
    LessonTeacher,
    MemoryItem,
    MemoryKind,
)

QUESTION, ANSWER = "Who founded the town of Zorbia?", "Quillan Marsh"
CHUNK = "The Velmora Archive keeps the tide maps of Tarquin Bay. Velmora Archive opens at dawn."
NLL = replace(FAST_LEARNING, correction_rule=CorrectionRule.NLL)


def qa_item(
    question: str = QUESTION, answer: str = ANSWER, tenant: str = "t", created: float | None = None
) -> MemoryItem:
    return MemoryItem(
        uuid.uuid4().hex, MemoryKind.CORRECTION, "chat", question.lower(), f"Q: {question}\nA: {answer}", (),
        time.time() if created is None else created, tenant=tenant,
    )  # fmt: skip


def chunk_item(text: str = CHUNK) -> MemoryItem:
    return MemoryItem("d1-0", MemoryKind.DOCUMENT, "document", "harbour.md", text, ("d1",), time.time(), tenant="t")


def test_a_qa_item_teaches_its_question_and_two_paraphrases_with_its_answer(serve_policy: Policy) -> None:
    item = qa_item()
    lessons = memory_lessons(serve_policy, item)
    decode = serve_policy.tokenizer.decode
    assert len(lessons) == 3 and not any(lesson.protocol for lesson in lessons)  # plain chat: no chain of thought
    students = [decode(lesson.student_prompt) for lesson in lessons]
    assert all(QUESTION in s and ANSWER not in s and DATA_MARK not in s for s in students)
    assert len(set(students)) == 3  # the question and two different rewordings
    assert all(
        p != QUESTION and p.replace(QUESTION, "{question}") in QUESTION_TEMPLATES for p in paraphrases(QUESTION, 2)
    )
    for lesson in lessons:
        teacher = decode(lesson.teacher_prompt)
        assert ANSWER in teacher and DATA_MARK not in teacher  # the taught exchange, as recall puts it
        assert teacher.index(ANSWER) < teacher.rindex(QUESTION)  # before the question asked
        (success,) = lesson.successes
        assert decode(success.token_ids, skip_special_tokens=True).strip() == ANSWER


def test_a_document_chunk_is_asked_about_its_salient_phrases(serve_policy: Policy) -> None:
    assert salient_phrases(CHUNK, 3) == ["Velmora Archive", "Tarquin Bay"]  # "The" is no part of a name
    lessons = memory_lessons(serve_policy, chunk_item())
    decode = serve_policy.tokenizer.decode
    assert len(lessons) == 2 and all(not lesson.successes for lesson in lessons)  # the teacher is the target
    first = decode(lessons[0].student_prompt)
    assert DOCUMENT_TEMPLATES[0].format(phrase="Velmora Archive") in first and "tide maps" not in first
    assert all("tide maps" in decode(lesson.teacher_prompt) for lesson in lessons)
    bare = memory_lessons(serve_policy, chunk_item("no capitalised words here at all."))
    assert len(bare) == 1 and "harbour.md" in decode(bare[0].student_prompt)


def test_a_deleted_item_is_unlearned_by_the_questions_it_was_taught_by(serve_policy: Policy) -> None:
    for item in (qa_item(), chunk_item()):
        taught, absent = memory_lessons(serve_policy, item), absence_lessons(serve_policy, item)
        assert [lesson.student_prompt for lesson in absent] == [lesson.student_prompt for lesson in taught]
        for lesson in absent:  # the bare question for both, the base model teaching: nothing quoted, no target
            assert lesson.teacher_prompt == lesson.student_prompt and lesson.teacher == LessonTeacher.PRETRAINED
            assert lesson.successes == () and not lesson.protocol
        assert all(lesson.teacher == LessonTeacher.POLICY for lesson in taught)


def answer_likelihood(learner: TenantLearner, question: str, answer: str) -> float:
    policy = learner.policy
    return reply_likelihood(policy, [reply_sample(policy, policy.chat_start(question), answer)])


def test_consolidation_makes_the_answer_likelier_on_the_bare_question_and_marks_its_items(
    tmp_path: Path, serve_policy: Policy
) -> None:
    learner = learner_for(tmp_path, serve_policy, NLL)
    store = learner.store
    items = [store.add_memory(qa_item()), store.add_memory(qa_item("Where does Brannoc live?", "Ostrel"))]
    before = answer_likelihood(learner, QUESTION, ANSWER)

    record = learner.consolidate("t")

    assert record is not None and record.status == AdapterStatus.LIVE, record
    assert record.reason == "consolidated 2 memory items" and record.metrics["consolidate/items"] == 2.0
    assert record.metrics["consolidate/lessons"] == 6.0  # each question and two paraphrases
    assert answer_likelihood(learner, QUESTION, ANSWER) > before + 0.5
    assert [store.memory_item(i.id).consolidated_version for i in items] == [record.version] * 2  # type: ignore[union-attr]
    assert store.live_versions()["t"][0].version == record.version
    assert learner.consolidate("t") is None  # nothing left


def test_a_rejected_consolidation_leaves_its_items_unconsolidated(tmp_path: Path, serve_policy: Policy) -> None:
    broken = replace(FAST_LEARNING, distill=replace(FAST_LEARNING.distill, learning_rate=float("inf")))
    learner = learner_for(tmp_path, serve_policy, broken)
    item = learner.store.add_memory(qa_item())
    gone = learner.store.add_memory(qa_item("Where does Brannoc live?", "Ostrel"))
    learner.store.mark_consolidated([gone.id], 7)
    learner.store.delete_memory("t", gone.id)
    record = learner.consolidate("t")
    assert record is not None and record.status == AdapterStatus.REJECTED and "non-finite" in record.reason
    assert record.metrics["consolidate/forgotten"] == 1.0
    assert learner.store.memory_item(item.id).consolidated_version is None  # type: ignore[union-attr]
    assert [i.id for i in learner.store.unconsolidated_memory("t")] == [item.id]  # tried again later
    assert [i.id for i in learner.store.unforgotten_memory("t")] == [gone.id]  # so is its absence
    assert "t" not in learner.store.live_versions()


def test_distilling_a_document_chunk_marks_it_and_never_touches_deleted_or_superseded_items(
    tmp_path: Path, serve_policy: Policy
) -> None:
    # short: self-distillation samples the student every step, over the whole vocabulary
    quick = replace(
        FAST_LEARNING, steps_per_round=1, distill=replace(FAST_LEARNING.distill, student_samples=2, answer_tokens=4)
    )
    learner = learner_for(tmp_path, serve_policy, quick)
    store = learner.store
    doc = DocumentRecord("d1", "t", "harbour.md", "text/plain", len(CHUNK), 1, time.time())
    chunk_id = "d1-0"  # the store names a document's chunks <document id>-<n>
    store.add_document(doc, [(0, CHUNK)])
    old = store.add_memory(qa_item(answer="Pell"))
    new = store.add_memory(qa_item())  # the same question again: supersedes `old`
    gone = store.add_memory(qa_item("Where does Brannoc live?", "Ostrel"))
    store.delete_memory("t", gone.id)
    other = store.add_memory(qa_item(tenant="u"))
    assert [i.id for i in store.unconsolidated_memory("t")] == [chunk_id, new.id]

    record = learner.consolidate("t")

    assert record is not None and record.status == AdapterStatus.LIVE, record
    assert "consolidate/distill/kl" in record.metrics  # self-distillation, the teacher with the item quoted
    marks = {i.id: store.memory_item(i.id).consolidated_version for i in (old, new, gone, other)}  # type: ignore[union-attr]
    assert marks == {old.id: None, new.id: record.version, gone.id: None, other.id: None}
    assert store.memory_item(chunk_id).consolidated_version == record.version  # type: ignore[union-attr]
    assert store.unconsolidated_memory("t") == [] and len(store.unconsolidated_memory("u")) == 1


def test_a_consolidated_item_deleted_is_unlearned_by_the_next_one(tmp_path: Path, serve_policy: Policy) -> None:
    learner = learner_for(tmp_path, serve_policy, NLL)  # taught by NLL: the answer gets likelier (see above)
    store = learner.store
    item = store.add_memory(qa_item())
    before = answer_likelihood(learner, QUESTION, ANSWER)
    taught = learner.consolidate("t")
    assert taught is not None and taught.status == AdapterStatus.LIVE, taught
    known = answer_likelihood(learner, QUESTION, ANSWER)
    assert known > before + 0.5
    bobs = store.add_memory(qa_item(tenant="u"))
    store.mark_consolidated([bobs.id], 1)
    for tenant, gone in (("t", item), ("u", bobs)):
        store.delete_memory(tenant, gone.id)
    assert due_consolidations(store, 1, 0) == ["t", "u"]  # a deletion alone is work to do
    new = store.add_memory(qa_item("Where does Brannoc live?", "Ostrel"))

    # Unlearned by self-distillation (NLL has no text to imitate; short samples and no paraphrases, for
    # speed), in 16 steps: the round starts with the Adam moments the teaching round left (one
    # optimizer state per tenant, restored every round), which carry its first ~6 steps on towards
    # the answer.
    short = replace(FAST_LEARNING.distill, student_samples=2, answer_tokens=4)
    learner.config = replace(FAST_LEARNING, steps_per_round=16, consolidate_paraphrases=0, distill=short)
    record = learner.consolidate("t")

    assert record is not None and record.status == AdapterStatus.LIVE, record
    assert record.reason == "consolidated 1 memory items, trained the absence of 1 deleted"
    assert (record.metrics["consolidate/items"], record.metrics["consolidate/forgotten"]) == (1.0, 1.0)
    assert answer_likelihood(learner, QUESTION, ANSWER) < known - 0.3  # the weights forget it too
    mine, theirs = store.memory_item(item.id), store.memory_item(bobs.id)
    assert mine is not None and (mine.consolidated_version, mine.forgotten_version) == (taught.version, record.version)
    assert store.memory_item(new.id).consolidated_version == record.version  # type: ignore[union-attr]
    assert theirs is not None and theirs.forgotten_version is None  # another tenant's waits for its own round
    assert learner.consolidate("t") is None  # nothing left
    assert due_consolidations(store, 1, 0) == ["u"]


def test_the_worker_consolidates_after_n_new_items_and_backs_off_after_a_rejection(
    tmp_path: Path, serve_policy: Policy
) -> None:
    learner = learner_for(tmp_path, serve_policy, NLL)
    store = learner.store
    config = ServeConfig(store=tmp_path, learner=LearnerConfig(consolidate_after_items=2, consolidate_when_idle_s=0))
    store.add_memory(qa_item())
    assert due_consolidations(store, 2, 0) == [] and learn_once(learner, config) == []  # one item: not yet
    now = time.time()
    assert due_consolidations(store, 0, 60.0, now=now + 61) == ["t"]  # the idle trigger
    store.add_memory(qa_item("Where does Brannoc live?", "Ostrel"))
    assert due_consolidations(store, 2, 0) == ["t"]

    (entry,) = learn_once(learner, config)

    assert entry["event"] == "consolidate" and entry["status"] == "live" and entry["consolidate/items"] == 2.0
    assert store.consolidation_backlog() == {}
    # a rejected consolidation is retried after N more items (or idle), not at every poll
    store.add_memory(qa_item("What is Pell's trade?", "weaving", created=time.time() - 1))
    store.add_memory(qa_item("Who rules Ostrel?", "Mira", created=time.time() - 1))
    learner.config = replace(NLL, distill=replace(NLL.distill, learning_rate=float("inf")))
    (entry,) = learn_once(learner, config)
    assert entry["status"] == "rejected"
    assert store.consolidation_backlog()["t"].new == 0 and due_consolidations(store, 2, 0) == []
    store.add_memory(qa_item("Who built Tarn?", "Oswin"))
    store.add_memory(qa_item("Who sails to Tarn?", "Edda"))
    assert due_consolidations(store, 2, 0) == ["t"]


def test_the_cli_consolidates_a_tenant_of_a_serving_store(
    tmp_path: Path, serve_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "serve"
    config = ServeConfig(store=folder, model=str(serve_model_dir), lora=LoraSettings(rank=4, alpha=8), learning=NLL)
    folder.mkdir()
    (folder / "serve.json").write_text(json.dumps(config.to_dict()))
    with ExperienceStore(config.database_location) as store:
        item = store.add_memory(qa_item())
    torch.manual_seed(0)

    assert main(["consolidate", "--store", str(folder), "--tenant", "t", "--threads", "1", "--json"]) == 0

    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == "live" and summary["items"] == 1 and summary["waiting"] == 1, summary
    with ExperienceStore(config.database_location) as store:
        assert store.memory_item(item.id).consolidated_version == summary["version"]  # type: ignore[union-attr]
    assert main(["consolidate", "--store", str(folder), "--tenant", "t"]) == 0  # nothing left: no model loaded
    assert "no memory items waiting" in capsys.readouterr().out


def test_the_cli_keeps_the_run_path_and_says_what_it_needs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["consolidate", str(tmp_path)]) == 2  # RUN_DIR still goes to the run path
    assert "is not a run folder" in capsys.readouterr().err
    assert main(["consolidate"]) == 2
    assert "--store DIR --tenant NAME" in capsys.readouterr().err
    assert main(["consolidate", str(tmp_path), "--store", str(tmp_path), "--tenant", "t"]) == 2
    assert main(["consolidate", "--store", str(tmp_path / "nowhere"), "--tenant", "t"]) == 2
    assert "is not a serving store" in capsys.readouterr().err


def test_learner_config_checks_its_consolidation_triggers() -> None:
    with pytest.raises(ConfigError, match="consolidate_after_items"):
        LearnerConfig(consolidate_after_items=-1)
    assert asdict(LearnerConfig())["consolidate_after_items"] == 8


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_stores_backlog_leaves_out_held_out_corrections_and_counts_after_a_rejection(
    backend: str, tmp_path: Path, serve_policy: Policy, request: pytest.FixtureRequest
) -> None:
    """A held-out correction probes whether learning generalises; consolidating it would void the
    probe. The same SQL on both backends."""
    location: str | Path = tmp_path / "experience.sqlite"
    if backend == "postgres":
        psycopg = pytest.importorskip("psycopg")
        url, name = request.getfixturevalue("pg_url"), f"t{uuid.uuid4().hex}"
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        location = url.rsplit("/", 1)[0] + f"/{name}"
    with ExperienceStore(location) as store:
        for i in range(2):
            serve_request(store, serve_policy, f"r{i}", f"Who founded Zorbia? ({i})")
            memory = qa_item(f"Who founded Zorbia? ({i})", created=time.time() - 10)
            store.add_feedback(
                f"r{i}", 0, "t", FeedbackKind.CORRECTION, correction=ANSWER, holdout_every=2, memory=memory
            )
        (held,) = store.holdout_feedback("t")
        (kept,) = store.unconsolidated_memory("t")
        assert kept.provenance == ("r0", "fb-1") and held.request_id == "r1"
        assert store.consolidation_backlog()["t"].new == 1
        rejected = AdapterRecord("t", 1, AdapterStatus.REJECTED, None, time.time(), "no", {"consolidate/items": 1.0})
        store.record_adapter(rejected, [], [])
        assert store.consolidation_backlog()["t"].new == 0  # waits for new items (or idle)
        store.record_adapter(AdapterRecord("t", 2, AdapterStatus.LIVE, "p", time.time(), "ok", {}), [], [kept.id])
        assert store.consolidation_backlog() == {} and store.memory_item(kept.id).consolidated_version == 2  # type: ignore[union-attr]
