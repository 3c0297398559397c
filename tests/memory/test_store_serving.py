"""Serving in the one experience store: requests, feedback consumed with its adapter version,
tenants kept apart, and the migration of an old separate serving store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from lifelong.memory.store import ExperienceStore, StoreError, import_serve_store
from lifelong.types import AdapterRecord, AdapterStatus, Completion, FeedbackKind, Flag, StopReason

THUMBS, CORRECTION = FeedbackKind.THUMBS, FeedbackKind.CORRECTION


def completion(answer: str = "blue") -> Completion:
    return Completion((5, 6, 7), (-0.5, 0.0, -1.0), (1, 0, 1), "thinking", answer, StopReason.ANSWERED)


def served(store: ExperienceStore, rid: str, tenant: str = "alice") -> None:
    store.add_request(rid, tenant, "m", {"messages": []}, [1, 2, 3], {"temperature": 1.0})
    store.complete_request(rid, [completion(), completion("red")], 0, [Flag(rid, 1, tenant, "contradiction", "x")])


def test_a_store_belongs_to_one_model(tmp_path: Path) -> None:
    with ExperienceStore(tmp_path / "s.sqlite") as store:
        store.claim_model("a")
        store.claim_model("a")
        with pytest.raises(StoreError, match="--model a"):
            store.claim_model("b")


def test_request_roundtrip_and_completion_happens_once(tmp_path: Path) -> None:
    with ExperienceStore(tmp_path / "s.sqlite") as store:
        served(store, "r1")
        got = store.request("r1")
        assert got is not None and got.status == "completed" and got.prompt_ids == (1, 2, 3)
        assert got.choices == (completion(), completion("red"))
        with pytest.raises(StoreError):  # a second completion is refused and changes nothing
            store.complete_request("r1", [completion("green")], 1, [Flag("r1", 0, "alice", "x", "y")])
        assert store.request("r1").choices == (completion(), completion("red"))  # type: ignore[union-attr]
        assert store.rows("flags") == 1 and store.rows("choices") == 2
        assert store.request("nope") is None


def test_every_nth_correction_is_held_out_and_never_pending(tmp_path: Path) -> None:
    with ExperienceStore(tmp_path / "s.sqlite") as store:
        served(store, "r1")
        fbs = [store.add_feedback("r1", 0, "alice", CORRECTION, None, f"c{i}", holdout_every=3) for i in range(7)]
        assert [f.holdout for f in fbs] == [False, False, True, False, False, True, False]
        assert [f.correction for f in store.pending_feedback("alice")] == ["c0", "c1", "c3", "c4", "c6"]
        assert [f.correction for f in store.holdout_feedback("alice")] == ["c2", "c5"]


def test_an_adapter_version_consumes_its_feedback_in_the_same_transaction(tmp_path: Path) -> None:
    with ExperienceStore(tmp_path / "s.sqlite") as store:
        served(store, "r1")
        served(store, "r2", tenant="bob")
        a = [store.add_feedback("r1", 0, "alice", THUMBS, reward=1.0).id for _ in range(3)]
        b = store.add_feedback("r2", 0, "bob", THUMBS, reward=0.0).id
        assert store.pending_summary()["alice"][0] == 3
        record = AdapterRecord("alice", 1, AdapterStatus.LIVE, "/x", 0.0, "ok", {"probe/operator/candidate": -1.0})
        store.record_adapter(record, [*a[:2], b])  # bob's id is not alice's to consume
        assert [f.id for f in store.pending_feedback("alice")] == [a[2]]
        assert [f.id for f in store.pending_feedback("bob")] == [b]
        assert store.live_versions()["alice"][0].metrics == {"probe/operator/candidate": -1.0}
        assert store.next_version("alice") == 2 and store.next_version("bob") == 1
        # the running baseline: consumed ratings plus one pseudo-rating at 0.5
        assert store.rating_baseline("alice", window=10) == pytest.approx((0.5 + 1.0 + 1.0) / 3)


OLD_SERVE_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE requests (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, model TEXT NOT NULL, received REAL NOT NULL,
    body TEXT NOT NULL, prompt_ids TEXT NOT NULL, generation TEXT NOT NULL, status TEXT NOT NULL,
    adapter_version INTEGER, completed REAL);
CREATE TABLE choices (request_id TEXT NOT NULL, idx INTEGER NOT NULL, completion TEXT NOT NULL,
    PRIMARY KEY (request_id, idx));
CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, idx INTEGER NOT NULL,
    tenant TEXT NOT NULL, kind TEXT NOT NULL, reward REAL, correction TEXT, holdout INTEGER NOT NULL,
    received REAL NOT NULL, consumed_version INTEGER);
CREATE TABLE adapters (tenant TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL, path TEXT,
    created REAL NOT NULL, reason TEXT NOT NULL, metrics TEXT NOT NULL, PRIMARY KEY (tenant, version));
CREATE TABLE flags (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, idx INTEGER NOT NULL,
    tenant TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL, created REAL NOT NULL);
PRAGMA user_version=1;
"""


def old_serve_store(path: Path) -> None:
    """A serve.sqlite exactly as lifelong's schema-1 serving store wrote it (its DDL, verbatim)."""
    db = sqlite3.connect(path)
    db.executescript(OLD_SERVE_SCHEMA)
    body, ids, gen = json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "[1, 2, 3]", "{}"
    db.execute("INSERT INTO meta VALUES ('model', 'tiny')")
    for rid, tenant in (("r1", "alice"), ("r2", "bob")):
        db.execute(
            "INSERT INTO requests VALUES (?, ?, 'tiny', 1.0, ?, ?, ?, 'completed', 1, 2.0)",
            (rid, tenant, body, ids, gen),
        )
        choice = {
            "token_ids": [5],
            "logprobs": [-0.1],
            "loss_mask": [1],
            "reasoning": "",
            "answer": "x",
            "stop": "answered",
        }
        db.execute("INSERT INTO choices VALUES (?, 0, ?)", (rid, json.dumps(choice)))
    rows = [("r1", "alice", "thumbs", 1.0, None, 0, 1), ("r1", "alice", "correction", None, "y", 0, None),
            ("r2", "bob", "correction", None, "z", 1, None)]  # fmt: skip
    for rid, tenant, kind, reward, correction, holdout, consumed in rows:
        db.execute(
            "INSERT INTO feedback (request_id, idx, tenant, kind, reward, correction, holdout, received, "
            "consumed_version) VALUES (?, 0, ?, ?, ?, ?, ?, 3.0, ?)",
            (rid, tenant, kind, reward, correction, holdout, consumed),
        )
    db.execute("INSERT INTO adapters VALUES ('alice', 1, 'live', '/a/step-000001', 4.0, 'ok', '{}')")
    db.execute(
        "INSERT INTO flags (request_id, idx, tenant, kind, detail, created) VALUES ('r1', 0, 'alice', 'k', 'd', 5.0)"
    )
    db.commit()
    db.close()


def test_an_old_serving_store_migrates_without_losing_a_row(tmp_path: Path) -> None:
    old = tmp_path / "serve.sqlite"
    old_serve_store(old)
    with ExperienceStore(tmp_path / "experience.sqlite") as store:
        assert import_serve_store(old, store) == {"requests": 2, "choices": 2, "feedback": 3, "adapters": 1, "flags": 1}
        assert not old.exists() and (tmp_path / "serve.sqlite.migrated").is_file()  # kept, never deleted
        r1 = store.request("r1")
        assert r1 is not None and r1.tenant == "alice" and r1.choices[0].answer == "x" and r1.adapter_version == 1
        assert [(f.kind, f.correction) for f in store.pending_feedback("alice")] == [(CORRECTION, "y")]
        assert [f.correction for f in store.holdout_feedback("bob")] == ["z"]
        assert store.live_versions()["alice"][0].path == "/a/step-000001" and store.next_version("alice") == 2
        assert [f.source for _, f in store.flags(tenant="alice")] == ["r1"]
        with pytest.raises(StoreError, match="--model tiny"):
            store.claim_model("other")
        # a crash after the import's commit but before the rename: importing again adds nothing
        (tmp_path / "serve.sqlite.migrated").rename(old)
        import_serve_store(old, store)
        assert store.rows("feedback") == 3 and store.rows("requests") == 2
        new = store.add_feedback("r1", 0, "alice", THUMBS, reward=0.0)
        assert new.id == 4  # ids continue after the imported ones


def test_a_file_that_is_not_an_old_serving_store_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "serve.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with ExperienceStore(tmp_path / "e.sqlite") as store, pytest.raises(StoreError, match="not a serving store"):
        import_serve_store(other, store)
    assert other.exists()


def test_a_tenant_reads_only_its_own_rows(tmp_path: Path) -> None:
    with ExperienceStore(tmp_path / "s.sqlite") as store:
        served(store, "r1", "alice")
        served(store, "r2", "bob")
        store.add_feedback("r2", 0, "bob", CORRECTION, correction="c")
        assert store.pending_feedback("alice") == [] and store.feedback("alice") == []
        assert [f.tenant for _, f in store.flags(tenant="bob")] == ["bob"]
