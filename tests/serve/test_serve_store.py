"""The serving store: migrations, one-transaction writes, feedback consumed with its version."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lifelong.serve.store import SCHEMA_VERSION, AdapterRecord, Flag, ServeStore, StoreError
from lifelong.types import Completion, StopReason


def completion(answer: str = "blue") -> Completion:
    return Completion((5, 6, 7), (-0.5, 0.0, -1.0), (1, 0, 1), "thinking", answer, StopReason.ANSWERED)


def served(store: ServeStore, rid: str, tenant: str = "alice") -> None:
    store.add_request(rid, tenant, "m", {"messages": []}, [1, 2, 3], {"temperature": 1.0})
    store.complete_request(rid, [completion(), completion("red")], 0, [Flag(rid, 1, tenant, "contradiction", "x")])


def test_a_new_store_is_at_the_current_schema_and_in_wal_mode(tmp_path: Path) -> None:
    ServeStore(tmp_path / "s.sqlite").close()
    db = sqlite3.connect(tmp_path / "s.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_newer_schema_or_a_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    ServeStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this lifelong"):
        ServeStore(path)
    (tmp_path / "g.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError, match="cannot be opened"):
        ServeStore(tmp_path / "g.sqlite")


def test_a_store_belongs_to_one_model(tmp_path: Path) -> None:
    with ServeStore(tmp_path / "s.sqlite") as store:
        store.claim_model("a")
        store.claim_model("a")
        with pytest.raises(StoreError, match="--model a"):
            store.claim_model("b")


def test_request_roundtrip_and_completion_happens_once(tmp_path: Path) -> None:
    with ServeStore(tmp_path / "s.sqlite") as store:
        served(store, "r1")
        got = store.request("r1")
        assert got is not None and got.status == "completed" and got.prompt_ids == (1, 2, 3)
        assert got.choices == (completion(), completion("red"))
        with pytest.raises(StoreError):  # a second completion is refused and changes nothing
            store.complete_request("r1", [completion("green")], 1, [Flag("r1", 0, "alice", "x", "y")])
        assert store.request("r1").choices == (completion(), completion("red"))  # type: ignore[union-attr]
        assert store.count("flags") == 1 and store.count("choices") == 2
        assert store.request("nope") is None


def test_every_nth_correction_is_held_out_and_never_pending(tmp_path: Path) -> None:
    with ServeStore(tmp_path / "s.sqlite") as store:
        served(store, "r1")
        fbs = [store.add_feedback("r1", 0, "alice", "correction", None, f"c{i}", holdout_every=3) for i in range(7)]
        assert [f.holdout for f in fbs] == [False, False, True, False, False, True, False]
        assert [f.correction for f in store.pending_feedback("alice")] == ["c0", "c1", "c3", "c4", "c6"]
        assert [f.correction for f in store.holdout_feedback("alice")] == ["c2", "c5"]


def test_an_adapter_version_consumes_its_feedback_in_the_same_transaction(tmp_path: Path) -> None:
    with ServeStore(tmp_path / "s.sqlite") as store:
        served(store, "r1")
        served(store, "r2", tenant="bob")
        a = [store.add_feedback("r1", 0, "alice", "thumbs", reward=1.0).id for _ in range(3)]
        b = store.add_feedback("r2", 0, "bob", "thumbs", reward=0.0).id
        assert store.pending_summary()["alice"][0] == 3
        record = AdapterRecord("alice", 1, "live", "/x", 0.0, "ok", {"probe/operator/candidate": -1.0})
        store.record_adapter(record, [*a[:2], b])  # bob's id is not alice's to consume
        assert [f.id for f in store.pending_feedback("alice")] == [a[2]]
        assert [f.id for f in store.pending_feedback("bob")] == [b]
        assert store.live_versions()["alice"][0].metrics == {"probe/operator/candidate": -1.0}
        assert store.next_version("alice") == 2 and store.next_version("bob") == 1
        # the running baseline: consumed ratings plus one pseudo-rating at 0.5
        assert store.rating_baseline("alice", window=10) == pytest.approx((0.5 + 1.0 + 1.0) / 3)
