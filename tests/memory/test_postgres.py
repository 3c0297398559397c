"""The experience store on a real PostgreSQL server (started on loopback by the test)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from lifelong.memory.store import SCHEMA_VERSION, ExperienceStore, StoreError, import_serve_store
from lifelong.types import AdapterRecord, AdapterStatus, FeedbackKind
from tests.memory.test_store import episode
from tests.memory.test_store_serving import old_serve_store, served

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def fresh_url(pg_url: str) -> str:
    """A new empty database per test."""
    name = f"t{uuid.uuid4().hex}"  # hash(object()) repeats once the object is freed
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return pg_url.rsplit("/", 1)[0] + f"/{name}"


def test_roundtrip_and_filters_match_sqlite(fresh_url: str, tmp_path: Path) -> None:
    for location in (fresh_url, tmp_path / "s.sqlite"):
        with ExperienceStore(location) as store:
            store.add([episode(0), episode(1, 0.0)], run_id="r", step=1, model="m")
            store.add([episode(2, split="probe")], run_id="r", step=2, model="m")
            assert store.episodes(run_id="r", step=1) == [episode(0), episode(1, 0.0)]
            assert store.count(split="probe") == 1 and store.ids() == {"ep0", "ep1", "ep2"}


def test_a_failed_transaction_writes_nothing(fresh_url: str) -> None:
    with ExperienceStore(fresh_url) as store:
        store.add([episode(0)], run_id="r", step=1, model="m")
        with pytest.raises(psycopg.errors.UniqueViolation):
            store.add([episode(1), episode(0)], run_id="r", step=2, model="m")
        assert store.ids() == {"ep0"}


def test_newer_schema_is_refused(fresh_url: str) -> None:
    ExperienceStore(fresh_url).close()
    with psycopg.connect(fresh_url, autocommit=True) as db:
        db.execute("UPDATE lifelong_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this lifelong"):
        ExperienceStore(fresh_url)


def test_unreachable_url_says_what_to_check() -> None:
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL") as err:
        ExperienceStore("postgresql://nobody:secret@127.0.0.1:1/none")
    assert "secret" not in str(err.value) and "server is running" in err.value.fix


def test_serving_rows_and_an_old_serving_store_on_postgresql(fresh_url: str, tmp_path: Path) -> None:
    old = tmp_path / "serve.sqlite"
    old_serve_store(old)
    with ExperienceStore(fresh_url) as store:
        import_serve_store(old, store)
        served(store, "r3", "alice")
        new = store.add_feedback("r3", 1, "alice", FeedbackKind.THUMBS, reward=1.0)
        assert new.id == 4  # the sequence follows the imported ids
        store.record_adapter(AdapterRecord("alice", 2, AdapterStatus.LIVE, "/p", 0.0, "ok", {"m": 1.0}), [new.id])
        store.record_adapter(AdapterRecord("alice", 2, AdapterStatus.LIVE, "/q", 0.0, "again", {}), [])
        assert [r.path for r in store.live_versions()["alice"]] == ["/q", "/a/step-000001"]
        assert [f.id for f in store.pending_feedback("alice")] == [2]
        assert store.request("r3").choices[1].answer == "red"  # type: ignore[union-attr]


def test_memory_search_supersede_and_delete_on_postgresql(fresh_url: str) -> None:
    from tests.memory.test_memory_items import doc, fact, ids

    with ExperienceStore(fresh_url) as store:
        store.add_memory(fact("office", "Where is the Zorbel office?", "On Plinth street"))
        store.add_memory(fact("lead", "Who leads team Quarn?", "Ada Mbeki"))
        store.add_memory(fact("bobs", "Where is the Zorbel office?", "Elsewhere", tenant="bob"))
        assert ids(store.search_memory("alice", "where's the zorbel office", 3)) == ["office"]
        assert ids(store.search_memory("alice", "Quarn team leader", 3)) == ["lead"]
        store.add_memory(fact("new", "where is the zorbel office", "Vell road"))
        assert ids(store.search_memory("alice", "Zorbel office", 3)) == ["new"]
        assert store.delete_memory("bob", "new") is None and store.delete_memory("alice", "new") is not None
        assert store.search_memory("alice", "Zorbel office", 3) == []
        store.add_document(doc("d1"), [(0, "The canteen opens at noon.")])
        assert store.add_document(doc("d2"), [(0, "The canteen opens at eleven.")]) == ["d1"]
        assert ids(store.search_memory("alice", "canteen", 3)) == ["d2-0"]


def test_recall_gates_by_relevance_on_postgresql(fresh_url: str) -> None:
    from tests.memory.test_memory_items import capitals, doc, fact, recalled

    with ExperienceStore(fresh_url) as store:
        capitals(store)
        store.add_memory(fact("zorbia", "Who founded Zorbia?", "Quentin Marl"))
        store.add_memory(fact("kessaly", "Who founded Kessaly?", "Ivo Dran"))
        store.add_document(doc("d1"), [(0, "The Quillmarsh protocol needs two signatures.")])
        assert recalled(store, "What is the capital of the Netherlands?") == []
        assert recalled(store, "What is the capital of Ireland?") == ["ireland"]
        assert recalled(store, "Zorbia was founded by whom?") == ["zorbia"]
        assert recalled(store, "How many signatures does the Quillmarsh protocol need?") == ["d1-0"]
        # "not" is a stopword of PostgreSQL's index, not a rare word: it must not outweigh "Ireland"
        assert recalled(store, "Ireland's capital, or not?") == ["ireland"]
