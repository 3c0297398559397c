"""The experience store: everything the agent experienced, durable before it is learned from.

One store for every source of experience. `lifelong run` writes the episodes it plays; `lifelong
serve` writes each request, its choices, the feedback on them, the adapter versions the guard let
live and the monitor's flags, and the feedback becomes episodes here too before it is learned from.
Every row carries its tenant (`""` for a run), and every read that serves a tenant filters by it.

Two backends with the same SQL (backends.py): SQLite, one file in WAL mode with `synchronous=FULL`,
and PostgreSQL. One logical write is one transaction, so a crash leaves all of it or none. The schema
is versioned; opening a store migrates an older one in place and refuses one written by a newer
lifelong with a clear error. `import_serve_store` carries a serving store of the old separate schema
(`serve.sqlite`) into this one without losing a row. Safe to share between threads (one lock) and
processes (the database's own locking).

Memory items carry their tenant and provenance and are full-text indexed (`search_memory`). They are
never rewritten: a newer item supersedes an older one by a simple rule (below, `add_memory` and
`add_document`), a deletion leaves a tombstone, so a deleted item is neither retrieved nor consolidated
again while the store still knows it existed, whether it had been consolidated, and whether a later
consolidation has trained its absence since (`unforgotten_memory`).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lifelong.memory.backends import Backend, StoreError, is_database_url, open_backend
from lifelong.types import (
    AdapterRecord,
    AdapterStatus,
    Completion,
    DocumentRecord,
    Episode,
    Feedback,
    FeedbackKind,
    Flag,
    MemoryItem,
    MemoryKind,
    RequestStatus,
    ServedRequest,
    StopReason,
    Turn,
)

__all__ = [
    "CONSOLIDATION_METRIC",
    "FORGOTTEN_METRIC",
    "ConsolidationBacklog",
    "ExperienceStore",
    "StoreError",
    "TermCounts",
    "episode_summary",
    "import_serve_store",
    "is_database_url",
    "query_terms",
]

SCHEMA_VERSION = 5

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE episodes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        run_id TEXT NOT NULL,
        step INTEGER NOT NULL,
        env TEXT NOT NULL,
        seed INTEGER NOT NULL,
        group_id TEXT NOT NULL,
        split TEXT NOT NULL,
        prompt TEXT NOT NULL,
        reasoning TEXT NOT NULL,
        answer TEXT NOT NULL,
        reward REAL NOT NULL,
        success INTEGER NOT NULL,
        feedback TEXT,
        info TEXT NOT NULL,
        turns TEXT NOT NULL,
        model TEXT NOT NULL,
        adapter_version INTEGER NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX episodes_run_step ON episodes (run_id, step, split);
    """,
    # Fast-path memory: small items (lessons from failures, examples of successes) with provenance,
    # and a log of every edit, so memory is changed item by item and never rewritten whole.
    2: """
    CREATE TABLE memory_items (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        task TEXT NOT NULL,
        key TEXT NOT NULL,
        text TEXT NOT NULL,
        provenance TEXT NOT NULL,
        created REAL NOT NULL,
        uses INTEGER NOT NULL DEFAULT 0,
        wins INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX memory_items_task ON memory_items (task);
    CREATE TABLE memory_edits (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        op TEXT NOT NULL,
        item_id TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    """,
    # One store for serving too: the tenant of every row, and what `lifelong serve` received,
    # answered and was told (until schema 3 these lived in a separate serve.sqlite).
    3: """
    ALTER TABLE episodes ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
    CREATE INDEX episodes_tenant ON episodes (tenant, run_id, step);
    ALTER TABLE memory_items ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
    CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE requests (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        model TEXT NOT NULL,
        received REAL NOT NULL,
        body TEXT NOT NULL,
        prompt_ids TEXT NOT NULL,
        generation TEXT NOT NULL,
        status TEXT NOT NULL,
        adapter_version INTEGER,
        completed REAL
    );
    CREATE INDEX requests_tenant ON requests (tenant, received);
    CREATE TABLE choices (
        request_id TEXT NOT NULL REFERENCES requests (id),
        idx INTEGER NOT NULL,
        completion TEXT NOT NULL,
        PRIMARY KEY (request_id, idx)
    );
    CREATE TABLE feedback (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL REFERENCES requests (id),
        idx INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        kind TEXT NOT NULL,
        reward REAL,
        correction TEXT,
        holdout INTEGER NOT NULL,
        received REAL NOT NULL,
        consumed_version INTEGER
    );
    CREATE INDEX feedback_pending ON feedback (tenant, holdout, consumed_version);
    CREATE TABLE adapter_versions (
        tenant TEXT NOT NULL,
        version INTEGER NOT NULL,
        status TEXT NOT NULL,
        path TEXT,
        created REAL NOT NULL,
        reason TEXT NOT NULL,
        metrics TEXT NOT NULL,
        PRIMARY KEY (tenant, version)
    );
    CREATE TABLE flags (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,
        idx INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE INDEX flags_tenant ON flags (tenant, id);
    """,
    # Memory with provenance for serving: a chunk's offset in its document, supersession, tombstones,
    # the adapter version an item was consolidated into, taught documents; and a full-text index
    # (created by the backend after these statements: FTS5 on SQLite, a GIN index on PostgreSQL).
    4: """
    ALTER TABLE memory_items ADD COLUMN char_offset INTEGER;
    ALTER TABLE memory_items ADD COLUMN superseded_by TEXT;
    ALTER TABLE memory_items ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE memory_items ADD COLUMN consolidated_version INTEGER;
    CREATE INDEX memory_items_tenant ON memory_items (tenant, kind, key);
    CREATE TABLE documents (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        media_type TEXT NOT NULL,
        chars INTEGER NOT NULL,
        chunks INTEGER NOT NULL,
        created REAL NOT NULL,
        superseded_by TEXT,
        deleted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX documents_tenant ON documents (tenant, name);
    """,
    # The adapter version that trained a deleted item's absence (a consolidation after the deletion
    # of an item that was consolidated before it).
    5: """
    ALTER TABLE memory_items ADD COLUMN forgotten_version INTEGER;
    """,
}

# What a migration needs beyond its statements, per backend.
_AFTER_MIGRATION: dict[int, Callable[[Backend], None]] = {4: lambda db: db.create_text_index()}

# Feedback items supersede older feedback items of the same question (see add_memory).
_FEEDBACK_KINDS = (MemoryKind.CORRECTION.value, MemoryKind.RATED_ANSWER.value)

# Words too common to say what a question is about; left out of search queries so that a query
# matches an item only through the words that carry its meaning. The question fillers ("how many",
# "what does it say about") matter to recall's relevance gate too: a word no item contains weighs
# most there, so a filler left in would count as the question's subject.
_STOPWORD_TEXT = (
    "a about an and any are as at be but by can could did do does for from had has have how i if in into is "
    "it its many me much my of on or our please say should so some tell than that the their them then "
    "there these they this to us was we were what when where which who whom why will with would you your"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[^\W_]+")


def query_terms(text: str, limit: int = 32) -> list[str]:
    """The distinct searchable words of a query, lowercased, in order: letters and digits only, so a
    query can never be read as search syntax."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in _STOPWORDS and word.isascii() and word.isalnum() and (len(word) > 1 or word.isdigit()):
            seen.setdefault(word, None)
    return list(seen)[:limit]


@dataclass(frozen=True)
class TermCounts:
    """How common each searchable word of a query is among a tenant's live items (for `recall`'s
    relevance gate): `items` live items in all, `df[word]` of them contain the word (as the index
    stems it), and `found_in[word]` are those of the asked-about items that contain it."""

    items: int
    df: dict[str, int]
    found_in: dict[str, frozenset[str]]


# The metric every consolidation's adapter record carries (kept or rejected): how many items it took.
# The store finds a tenant's last rejected consolidation by it (`consolidation_backlog`).
CONSOLIDATION_METRIC = "consolidate/items"
# ...and how many deleted items it unlearned (`unforgotten_memory`).
FORGOTTEN_METRIC = "consolidate/forgotten"

# A tenant's memory items that consolidation still has to move into the weights: served kinds only
# (a run's lessons and examples are `lifelong consolidate RUN_DIR`'s), live (not deleted, not
# superseded), not consolidated yet, and not made from a held-out correction: those are the gate's
# probes of what learning generalises to, and training on them would void the probe. Provenance of a
# feedback item is ["<request id>", "fb-<feedback id>"] (`add_feedback`).
_UNCONSOLIDATED = (
    "m.tenant <> '' AND m.kind IN (?, ?, ?) AND m.deleted = 0 AND m.superseded_by IS NULL "
    "AND m.consolidated_version IS NULL AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.tenant = m.tenant "
    "AND f.holdout = 1 AND m.provenance LIKE ? || CAST(f.id AS TEXT) || ?)"
)
# Its parameters; the LIKE pattern goes as parameters, as a literal '%' would be a placeholder to psycopg.
_UNCONSOLIDATED_ARGS = (*_FEEDBACK_KINDS, MemoryKind.DOCUMENT.value, '%"fb-', '"]')
# A tenant's deleted items that are still in its weights: consolidated before their deletion, and no
# kept consolidation has trained their absence since. A superseded one is left out: its question is
# the newer item's now, and unlearning it would unlearn the newer answer too.
_UNFORGOTTEN = (
    "m.tenant <> '' AND m.deleted = 1 AND m.superseded_by IS NULL AND m.consolidated_version IS NOT NULL "
    "AND m.forgotten_version IS NULL"
)


@dataclass(frozen=True)
class ConsolidationBacklog:
    """What one tenant has waiting for consolidation (the learning worker's trigger reads it)."""

    items: int  # unconsolidated items and deleted ones still in the weights (`unforgotten_memory`)
    new: int  # of them, created after the tenant's last rejected consolidation (all of them if none was)
    last_activity: float  # newest of: an item created, an adapter version recorded (any round)


def completion_to_json(c: Completion) -> dict[str, Any]:
    return {
        "token_ids": list(c.token_ids),
        "logprobs": list(c.logprobs),
        "loss_mask": list(c.loss_mask),
        "reasoning": c.reasoning,
        "answer": c.answer,
        "stop": c.stop.value,
    }


def completion_from_json(d: dict[str, Any]) -> Completion:
    return Completion(
        tuple(d["token_ids"]),
        tuple(d["logprobs"]),
        tuple(d["loss_mask"]),
        d["reasoning"],
        d["answer"],
        StopReason(d["stop"]),
    )


def _turn_to_json(t: Turn) -> dict[str, Any]:
    return {
        "prompt_ids": list(t.prompt_ids),
        "observation": t.observation,
        "reward": t.reward,
        "completion": completion_to_json(t.completion),
    }


def _turn_from_json(d: dict[str, Any]) -> Turn:
    return Turn(tuple(d["prompt_ids"]), completion_from_json(d["completion"]), d["observation"], d["reward"])


_MEMORY_COLUMNS = (
    "id, kind, task, key, text, provenance, created, uses, wins, tenant, char_offset, superseded_by, deleted, "
    "consolidated_version, forgotten_version"
)
_DOCUMENT_COLUMNS = "id, tenant, name, media_type, chars, chunks, created, superseded_by, deleted"
_FEEDBACK_COLUMNS = "id, request_id, idx, tenant, kind, reward, correction, holdout, received, consumed_version"
_ADAPTER_COLUMNS = "tenant, version, status, path, created, reason, metrics"
_REQUEST_COLUMNS = "id, tenant, model, received, body, prompt_ids, generation, status, adapter_version"


def _feedback(r: Sequence[Any]) -> Feedback:
    return Feedback(r[0], r[1], r[2], r[3], FeedbackKind(r[4]), r[5], r[6], bool(r[7]), r[8], r[9])


def _memory(r: Sequence[Any]) -> MemoryItem:
    return MemoryItem(
        r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6], r[7], r[8], r[9], r[10], r[11], bool(r[12]), r[13],
        r[14],
    )  # fmt: skip


def _document(r: Sequence[Any]) -> DocumentRecord:
    return DocumentRecord(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), r[6], r[7], bool(r[8]))


def _adapter(r: Sequence[Any]) -> AdapterRecord:
    return AdapterRecord(r[0], r[1], AdapterStatus(r[2]), r[3], r[4], r[5], json.loads(r[6]))


class ExperienceStore:
    """Episodes, memory items and served requests. `ExperienceStore("runs/x/experience.sqlite")` or
    `ExperienceStore("postgresql://user@host/db")`; safe to share between threads and processes."""

    def __init__(self, location: str | Path) -> None:
        self._lock = threading.RLock()  # one connection, shared by the server's threads
        try:
            self._b: Backend = open_backend(location)
        except sqlite3.DatabaseError as exc:
            raise _unreadable(str(location), exc) from exc
        self.location = self._b.name
        try:
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise _unreadable(self.location, exc) from exc

    def _migrate(self) -> None:
        version = self._b.version()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"experience store {self.location} has schema version {version}, "
                f"newer than this lifelong ({SCHEMA_VERSION})",
                "upgrade lifelong (pip install -U lifelong) to read it",
            )
        for v in range(version + 1, SCHEMA_VERSION + 1):
            with self._tx() as db:
                for statement in filter(str.strip, _MIGRATIONS[v].split(";")):
                    db.execute(db.ddl(statement))
                if v in _AFTER_MIGRATION:
                    _AFTER_MIGRATION[v](db)
                db.set_version(v)

    def close(self) -> None:
        with self._lock:
            self._b.close()

    def __enter__(self) -> ExperienceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[Backend]:
        """One transaction: all or nothing."""
        with self._lock:
            self._b.begin()
            try:
                yield self._b
                self._b.execute("COMMIT")
            except BaseException:
                self._b.execute("ROLLBACK")
                raise

    def _transaction(
        self,
        statements: Sequence[tuple[str, Sequence[Any]]],
        many: tuple[str, Sequence[Sequence[Any]]] | None = None,
        then: Callable[[], None] | None = None,
    ) -> None:
        with self._tx() as db:
            if many is not None:
                db.executemany(*many)
            for sql, args in statements:
                db.execute(sql, args)
            if then is not None:
                then()

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return list(self._b.execute(sql, args).fetchall())

    # ---- episodes -----------------------------------------------------------------------------
    def add(
        self,
        episodes: Iterable[Episode],
        *,
        run_id: str,
        step: int,
        model: str,
        tenant: str = "",
        skip_stored: bool = False,
    ) -> int:
        """Store episodes in one transaction; returns how many were given. `skip_stored`: an episode
        whose id is stored already is left as it is (a round redone after a crash), not an error."""
        rows = []
        for ep in episodes:
            last = ep.turns[-1].completion if ep.turns else None
            rows.append(
                (
                    ep.id,
                    run_id,
                    step,
                    ep.env,
                    ep.seed,
                    ep.group,
                    ep.split,
                    ep.turns[0].observation if ep.turns else "",
                    last.reasoning if last else "",
                    last.answer if last else "",
                    ep.reward,
                    int(ep.success),
                    None,
                    json.dumps(ep.info, default=str),
                    json.dumps([_turn_to_json(t) for t in ep.turns]),
                    model,
                    ep.adapter_version,
                    ep.created or time.time(),
                    tenant,
                )
            )
        columns = (
            "id, run_id, step, env, seed, group_id, split, prompt, reasoning, answer, reward, success, feedback, "
            "info, turns, model, adapter_version, created, tenant"
        )
        conflict = " ON CONFLICT (id) DO NOTHING" if skip_stored else ""
        self._transaction([], many=(f"INSERT INTO episodes ({columns}) VALUES ({','.join('?' * 19)}){conflict}", rows))
        return len(rows)

    def count(self, run_id: str | None = None, split: str | None = None) -> int:
        sql, args = self._where(run_id=run_id, split=split)
        return int(self._query(f"SELECT COUNT(*) FROM episodes{sql}", args)[0][0])

    def ids(self, run_id: str | None = None) -> set[str]:
        sql, args = self._where(run_id=run_id)
        return {r[0] for r in self._query(f"SELECT id FROM episodes{sql}", args)}

    def episode(self, episode_id: str) -> Episode | None:
        found = list(self.iter_episodes(id=episode_id))
        return found[0] if found else None

    def episodes(
        self,
        run_id: str | None = None,
        step: int | None = None,
        split: str | None = None,
        tenant: str | None = None,
        group: str | None = None,
    ) -> list[Episode]:
        return list(self.iter_episodes(run_id=run_id, step=step, split=split, tenant=tenant, group=group))

    def iter_episodes(
        self,
        run_id: str | None = None,
        step: int | None = None,
        split: str | None = None,
        id: str | None = None,
        tenant: str | None = None,
        group: str | None = None,
    ) -> Iterator[Episode]:
        sql, args = self._where(run_id=run_id, step=step, split=split, id=id, tenant=tenant, group_id=group)
        query = (
            "SELECT id, env, seed, group_id, split, reward, success, info, turns, adapter_version, created "
            f"FROM episodes{sql} ORDER BY seq"
        )
        for row in self._query(query, args):
            yield Episode(
                id=row[0],
                env=row[1],
                seed=row[2],
                group=row[3],
                split=row[4],
                reward=row[5],
                success=bool(row[6]),
                info=json.loads(row[7]),
                turns=tuple(_turn_from_json(t) for t in json.loads(row[8])),
                adapter_version=row[9],
                created=row[10],
            )

    # ---- memory items -------------------------------------------------------------------------
    def add_memory(self, item: MemoryItem) -> MemoryItem:
        """Store and index one item, in one transaction. The supersede rule: a correction or an
        up-rated answer (its key is the normalised question) supersedes the tenant's older live
        correction or rated answer of the same question: what a person said last is what they want.
        So does it a deleted one that is still in the weights: the newer answer replaces it there,
        and training its absence as well would pull against the newer answer (`_UNFORGOTTEN`)."""
        with self._tx() as db:
            self._insert_memory(db, item)
        return item

    def _insert_memory(self, db: Backend, item: MemoryItem) -> None:
        db.execute(
            "INSERT INTO memory_items (id, kind, task, key, text, provenance, created, uses, wins, tenant, "
            "char_offset, superseded_by, deleted, consolidated_version, forgotten_version) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (item.id, str(item.kind), item.task, item.key, item.text, json.dumps(list(item.provenance)), item.created,
             item.uses, item.wins, item.tenant, item.offset, item.superseded_by, int(item.deleted),
             item.consolidated_version, item.forgotten_version),
        )  # fmt: skip
        db.execute(*_edit("add", item.id, {"kind": str(item.kind), "task": item.task, "key": item.key}))
        if item.deleted or item.superseded_by is not None:
            return
        db.index_text(item.id, item.text)
        if item.kind in _FEEDBACK_KINDS and item.key:
            older = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM memory_items WHERE tenant = ? AND key = ? AND kind IN (?, ?) AND id <> ? "
                    "AND superseded_by IS NULL AND (deleted = 0 OR (consolidated_version IS NOT NULL "
                    "AND forgotten_version IS NULL))",
                    (item.tenant, item.key, *_FEEDBACK_KINDS, item.id),
                ).fetchall()
            ]
            self._supersede(db, older, item.id)

    @staticmethod
    def _supersede(db: Backend, item_ids: Sequence[str], by: str) -> None:
        if not item_ids:
            return
        db.executemany("UPDATE memory_items SET superseded_by = ? WHERE id = ?", [(by, i) for i in item_ids])
        db.unindex_text(item_ids)
        for i in item_ids:
            db.execute(*_edit("supersede", i, {"by": by}))

    def forget_memory(self, item_id: str, reason: str) -> bool:
        """Delete one item (explicit forgetting): a tombstone, never retrieved or consolidated again.
        Returns False if there is no such live item."""
        with self._tx() as db:
            return self._tombstone(db, [item_id], reason) == 1

    @staticmethod
    def _tombstone(db: Backend, item_ids: Sequence[str], reason: str) -> int:
        live = [
            i
            for i in item_ids
            if db.execute("SELECT 1 FROM memory_items WHERE id = ? AND deleted = 0", (i,)).fetchone()
        ]
        if live:
            db.executemany("UPDATE memory_items SET deleted = 1 WHERE id = ?", [(i,) for i in live])
            db.unindex_text(live)
            for i in live:
                db.execute(*_edit("forget", i, {"reason": reason}))
        return len(live)

    def delete_memory(self, tenant: str, item_id: str) -> MemoryItem | None:
        """A tenant deletes one of its items; returns it as it was (with `consolidated_version`),
        or None if the tenant has no such live item (another tenant's id is not found either)."""
        with self._tx() as db:
            found = self._memory_rows(db, " WHERE id = ? AND tenant = ? AND deleted = 0", [item_id, tenant])
            if not found:
                return None
            self._tombstone(db, [item_id], "deleted by its tenant")
        return found[0]

    def mark_consolidated(self, item_ids: Sequence[str], version: int) -> None:
        """Record that these items were consolidated into adapter `version` (consolidation records
        this with the version itself: `record_adapter(..., consolidated=...)`)."""
        with self._tx() as db:
            self._mark(db, "consolidated_version", "consolidate", item_ids, version)

    @staticmethod
    def _mark(db: Backend, column: str, op: str, item_ids: Sequence[str], version: int) -> None:
        """Set `column` (consolidated_version or forgotten_version) of the items to `version`, logged as `op`."""
        if not item_ids:
            return
        db.executemany(f"UPDATE memory_items SET {column} = ? WHERE id = ?", [(version, i) for i in item_ids])
        for i in item_ids:
            db.execute(*_edit(op, i, {"version": version}))

    def unconsolidated_memory(self, tenant: str, limit: int | None = None) -> list[MemoryItem]:
        """The tenant's items consolidation has still to move into the weights, oldest first, at most
        `limit`: corrections, up-rated answers and document chunks that are live (never deleted or
        superseded ones), not consolidated yet and not made from a held-out correction."""
        return self._oldest_memory(tenant, _UNCONSOLIDATED, _UNCONSOLIDATED_ARGS, limit)

    def unforgotten_memory(self, tenant: str, limit: int | None = None) -> list[MemoryItem]:
        """The tenant's deleted items whose absence consolidation has still to train, oldest first, at
        most `limit`: consolidated into an adapter before their deletion and not unlearned since
        (`record_adapter(..., forgotten=...)`); superseded ones are left out (`_UNFORGOTTEN`)."""
        return self._oldest_memory(tenant, _UNFORGOTTEN, (), limit)

    def _oldest_memory(self, tenant: str, where: str, args: Sequence[Any], limit: int | None) -> list[MemoryItem]:
        columns = ", ".join(f"m.{c}" for c in _MEMORY_COLUMNS.split(", "))
        sql = f"SELECT {columns} FROM memory_items m WHERE m.tenant = ? AND {where} ORDER BY m.created, m.id"
        params: list[Any] = [tenant, *args]
        if limit is not None:
            sql, params = sql + " LIMIT ?", [*params, limit]
        return [_memory(r) for r in self._query(sql, params)]

    def consolidation_backlog(self) -> dict[str, ConsolidationBacklog]:
        """tenant -> its backlog, for every tenant with unconsolidated items or deleted items still in
        its weights. A deleted item counts from when it was created, like any item (the deletion
        itself is no new item): after a rejected consolidation it waits like the rest."""
        last = (
            "COALESCE((SELECT MAX(a.created) FROM adapter_versions a WHERE a.tenant = m.tenant "
            "AND a.status = ? AND a.metrics LIKE ?), 0)"
        )
        rows = self._query(
            f"SELECT m.tenant, COUNT(*), SUM(CASE WHEN m.created > {last} THEN 1 ELSE 0 END), MAX(m.created), "
            "COALESCE((SELECT MAX(a.created) FROM adapter_versions a WHERE a.tenant = m.tenant), 0) "
            f"FROM memory_items m WHERE ({_UNCONSOLIDATED}) OR ({_UNFORGOTTEN}) GROUP BY m.tenant",
            (AdapterStatus.REJECTED.value, f'%"{CONSOLIDATION_METRIC}"%', *_UNCONSOLIDATED_ARGS),
        )
        return {r[0]: ConsolidationBacklog(int(r[1]), int(r[2]), max(float(r[3]), float(r[4]))) for r in rows}

    def record_memory_use(self, item_id: str, won: bool) -> None:
        self._transaction(
            [
                ("UPDATE memory_items SET uses = uses + 1, wins = wins + ? WHERE id = ?", (int(won), item_id)),
                _edit("use", item_id, {"won": won}),
            ]
        )

    def memory_items(
        self,
        task: str | None = None,
        *,
        tenant: str | None = None,
        kind: str | None = None,
        include_deleted: bool = False,
    ) -> list[MemoryItem]:
        """Items oldest first; deleted ones only when asked (superseded ones are listed: they are
        kept, and say what superseded them)."""
        sql, args = self._where(task=task, tenant=tenant, kind=None if kind is None else str(kind))
        if not include_deleted:
            sql = (sql + " AND" if sql else " WHERE") + " deleted = 0"
        with self._lock:
            return self._memory_rows(self._b, sql, args)

    def memory_item(self, item_id: str) -> MemoryItem | None:
        """One item by id, deleted or not."""
        with self._lock:
            found = self._memory_rows(self._b, " WHERE id = ?", [item_id])
        return found[0] if found else None

    def search_memory(self, tenant: str, query: str, k: int = 3) -> list[tuple[MemoryItem, float]]:
        """The tenant's live items (never deleted or superseded ones, never another tenant's) that
        share a meaningful word with `query`, best first, with their scores (higher is better:
        BM25 on SQLite, ts_rank on PostgreSQL; scores of the two backends are not comparable)."""
        terms = query_terms(query)
        if not terms or k < 1:
            return []
        columns = ", ".join(f"m.{c}" for c in _MEMORY_COLUMNS.split(", "))
        with self._lock:
            sql, args = self._b.search_sql(columns, terms)
            rows = self._b.execute(sql, [*args, tenant, k]).fetchall()
        return [(_memory(r), float(r[-1])) for r in rows]

    def term_counts(self, tenant: str, query: str, item_ids: Sequence[str]) -> TermCounts:
        """For each searchable word of `query` (the words `search_memory` searches by), how many of the
        tenant's live items contain it, and which of `item_ids` do: two indexed queries per word."""
        marks = ",".join("?" * len(item_ids))
        df: dict[str, int] = {}
        found_in: dict[str, frozenset[str]] = {}
        with self._lock:
            (items,) = self._b.execute(
                "SELECT COUNT(*) FROM memory_items WHERE tenant = ? AND deleted = 0 AND superseded_by IS NULL",
                (tenant,),
            ).fetchone()
            for term in self._b.indexed_terms(query_terms(query)):
                sql, args = self._b.term_sql(term)
                df[term] = int(self._b.execute(f"SELECT COUNT(*) {sql}", [*args, tenant]).fetchone()[0])
                found_in[term] = frozenset()
                if item_ids:
                    rows = self._b.execute(f"SELECT m.id {sql} AND m.id IN ({marks})", [*args, tenant, *item_ids])
                    found_in[term] = frozenset(r[0] for r in rows.fetchall())
        return TermCounts(int(items), df, found_in)

    @staticmethod
    def _memory_rows(db: Backend, where: str, args: Sequence[Any]) -> list[MemoryItem]:
        rows = db.execute(f"SELECT {_MEMORY_COLUMNS} FROM memory_items{where} ORDER BY created, id", args).fetchall()
        return [_memory(r) for r in rows]

    # ---- documents --------------------------------------------------------------------------
    def add_document(self, document: DocumentRecord, chunks: Sequence[tuple[int, str]]) -> list[str]:
        """A document and its chunks ((offset, text) pairs) as memory items, in one transaction:
        stored whole or not at all. A document of the same name the tenant taught before is
        superseded, with its chunks. Returns the ids of the documents it superseded."""
        with self._tx() as db:
            older = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM documents WHERE tenant = ? AND name = ? AND deleted = 0 AND superseded_by IS NULL",
                    (document.tenant, document.name),
                ).fetchall()
            ]
            db.execute(
                "INSERT INTO documents (id, tenant, name, media_type, chars, chunks, created, superseded_by, deleted) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 0)",
                (document.id, document.tenant, document.name, document.media_type, document.chars, len(chunks),
                 document.created),
            )  # fmt: skip
            for old in older:
                db.execute("UPDATE documents SET superseded_by = ? WHERE id = ?", (document.id, old))
                self._supersede(db, self._chunk_ids(db, old), document.id)
            for n, (offset, text) in enumerate(chunks):
                item = MemoryItem(
                    f"{document.id}-{n}", MemoryKind.DOCUMENT, "document", document.name, text, (document.id,),
                    document.created, tenant=document.tenant, offset=offset,
                )  # fmt: skip
                self._insert_memory(db, item)
        return older

    @staticmethod
    def _chunk_ids(db: Backend, document_id: str) -> list[str]:
        rows = db.execute(
            "SELECT id FROM memory_items WHERE kind = ? AND provenance = ?",
            (MemoryKind.DOCUMENT.value, json.dumps([document_id])),
        ).fetchall()
        return [r[0] for r in rows]

    def documents(self, tenant: str, include_superseded: bool = False) -> list[DocumentRecord]:
        """The tenant's documents that are not deleted, oldest first."""
        sql = " WHERE tenant = ? AND deleted = 0" + ("" if include_superseded else " AND superseded_by IS NULL")
        return [
            _document(r)
            for r in self._query(f"SELECT {_DOCUMENT_COLUMNS} FROM documents{sql} ORDER BY created, id", (tenant,))
        ]

    def document(self, tenant: str, document_id: str) -> DocumentRecord | None:
        """One of the tenant's documents that is not deleted; None for an unknown id or another tenant's."""
        rows = self._query(
            f"SELECT {_DOCUMENT_COLUMNS} FROM documents WHERE id = ? AND tenant = ? AND deleted = 0",
            (document_id, tenant),
        )
        return _document(rows[0]) if rows else None

    def document_chunks(self, document_id: str) -> list[MemoryItem]:
        with self._lock:
            items = self._memory_rows(
                self._b, " WHERE kind = ? AND provenance = ?", [MemoryKind.DOCUMENT.value, json.dumps([document_id])]
            )
        return sorted(items, key=lambda i: i.offset or 0)

    def delete_document(self, tenant: str, document_id: str) -> tuple[DocumentRecord, list[MemoryItem]] | None:
        """A tenant deletes one of its documents and every chunk of it (tombstones); returns the
        document and its chunks as they were, or None if the tenant has no such document."""
        with self._tx() as db:
            rows = db.execute(
                f"SELECT {_DOCUMENT_COLUMNS} FROM documents WHERE id = ? AND tenant = ? AND deleted = 0",
                (document_id, tenant),
            ).fetchall()
            if not rows:
                return None
            chunks = self._memory_rows(
                db, " WHERE kind = ? AND provenance = ?", [MemoryKind.DOCUMENT.value, json.dumps([document_id])]
            )
            db.execute("UPDATE documents SET deleted = 1 WHERE id = ?", (document_id,))
            self._tombstone(db, [c.id for c in chunks], "document deleted by its tenant")
        return _document(rows[0]), chunks

    def memory_edits(self) -> list[tuple[str, str, dict[str, Any]]]:
        rows = self._query("SELECT op, item_id, detail FROM memory_edits ORDER BY seq")
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

    # ---- served requests ----------------------------------------------------------------------
    def claim_model(self, model: str) -> None:
        """Bind the store to one model: adapters of another model would not fit it."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM store_meta WHERE key = 'model'").fetchone()
            if row is None:
                db.execute("INSERT INTO store_meta (key, value) VALUES ('model', ?)", (model,))
            elif row[0] != model:
                raise StoreError(
                    f"store {self.location} belongs to model {row[0]!r}, not {model!r}",
                    f"pass --model {row[0]} to serve it, or a new --store for the other model",
                )

    def add_request(
        self,
        id: str,
        tenant: str,
        model: str,
        body: dict[str, Any],
        prompt_ids: Sequence[int],
        generation: dict[str, Any],
    ) -> None:
        self._transaction(
            [
                (
                    f"INSERT INTO requests ({_REQUEST_COLUMNS}, completed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
                    (id, tenant, model, time.time(), json.dumps(body), json.dumps(list(prompt_ids)),
                     json.dumps(generation), RequestStatus.RECEIVED.value),
                )
            ]
        )  # fmt: skip

    def complete_request(
        self, id: str, completions: Sequence[Completion], adapter_version: int, flags: Sequence[Flag] = ()
    ) -> None:
        """The choices, the adapter that answered and the monitor's flags, in one transaction."""
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE requests SET status = ?, adapter_version = ?, completed = ? WHERE id = ? AND status = ?",
                (RequestStatus.COMPLETED.value, adapter_version, now, id, RequestStatus.RECEIVED.value),
            )
            if cur.rowcount != 1:
                raise StoreError(f"request {id} is not awaiting completion", "this is a bug in lifelong serve")
            db.executemany(
                "INSERT INTO choices (request_id, idx, completion) VALUES (?, ?, ?)",
                [(id, i, json.dumps(completion_to_json(c))) for i, c in enumerate(completions)],
            )
            self._insert_flags(db, flags, now)

    def fail_request(self, id: str) -> None:
        self._transaction(
            [
                (
                    "UPDATE requests SET status = ?, completed = ? WHERE id = ?",
                    (RequestStatus.FAILED.value, time.time(), id),
                )
            ]
        )

    def request(self, id: str) -> ServedRequest | None:
        rows = self._query(f"SELECT {_REQUEST_COLUMNS} FROM requests WHERE id = ?", (id,))
        if not rows:
            return None
        r = rows[0]
        choices = self._query("SELECT completion FROM choices WHERE request_id = ? ORDER BY idx", (id,))
        return ServedRequest(
            id=r[0],
            tenant=r[1],
            model=r[2],
            received=r[3],
            body=json.loads(r[4]),
            prompt_ids=tuple(json.loads(r[5])),
            generation=json.loads(r[6]),
            status=RequestStatus(r[7]),
            adapter_version=r[8],
            choices=tuple(completion_from_json(json.loads(c[0])) for c in choices),
        )

    def rows(self, table: str) -> int:
        """How many rows a serving table holds (requests, choices, feedback, adapter_versions, flags)."""
        if table not in {"requests", "choices", "feedback", "adapter_versions", "flags"}:
            raise ValueError(f"no table {table}")
        return int(self._query(f"SELECT COUNT(*) FROM {table}")[0][0])

    # ---- feedback -----------------------------------------------------------------------------
    def add_feedback(
        self,
        request_id: str,
        index: int,
        tenant: str,
        kind: FeedbackKind,
        reward: float | None = None,
        correction: str | None = None,
        holdout_every: int = 0,
        memory: MemoryItem | None = None,
    ) -> Feedback:
        """Store one feedback item. Every `holdout_every`-th correction of a tenant is held out.
        `memory`: the memory item it makes, stored in the same transaction with its provenance set
        to (request id, "fb-<feedback id>")."""
        now = time.time()
        with self._tx() as db:
            holdout = False
            if kind == FeedbackKind.CORRECTION and holdout_every:
                (n,) = db.execute(
                    "SELECT COUNT(*) FROM feedback WHERE tenant = ? AND kind = ?",
                    (tenant, FeedbackKind.CORRECTION.value),
                ).fetchone()
                holdout = (int(n) + 1) % holdout_every == 0
            (fid,) = db.execute(
                "INSERT INTO feedback (request_id, idx, tenant, kind, reward, correction, holdout, received) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (request_id, index, tenant, FeedbackKind(kind).value, reward, correction, int(holdout), now),
            ).fetchall()[0]  # fetch all: SQLite cannot commit while a RETURNING statement is open
            if memory is not None:
                self._insert_memory(db, replace(memory, provenance=(request_id, f"fb-{fid}")))
        return Feedback(int(fid), request_id, index, tenant, FeedbackKind(kind), reward, correction, holdout, now)

    def pending_feedback(self, tenant: str, limit: int = 1000) -> list[Feedback]:
        """Feedback of a tenant not yet consumed by a learning round (held-out items excluded)."""
        rows = self._query(
            f"SELECT {_FEEDBACK_COLUMNS} FROM feedback "
            "WHERE tenant = ? AND holdout = 0 AND consumed_version IS NULL ORDER BY id LIMIT ?",
            (tenant, limit),
        )
        return [_feedback(r) for r in rows]

    def pending_summary(self) -> dict[str, tuple[int, float]]:
        """tenant -> (pending items, when the oldest arrived)."""
        rows = self._query(
            "SELECT tenant, COUNT(*), MIN(received) FROM feedback "
            "WHERE holdout = 0 AND consumed_version IS NULL GROUP BY tenant"
        )
        return {r[0]: (int(r[1]), float(r[2])) for r in rows}

    def holdout_feedback(self, tenant: str) -> list[Feedback]:
        rows = self._query(
            f"SELECT {_FEEDBACK_COLUMNS} FROM feedback WHERE tenant = ? AND holdout = 1 ORDER BY id", (tenant,)
        )
        return [_feedback(r) for r in rows]

    def feedback(self, tenant: str | None = None) -> list[Feedback]:
        sql, args = self._where(tenant=tenant)
        return [_feedback(r) for r in self._query(f"SELECT {_FEEDBACK_COLUMNS} FROM feedback{sql} ORDER BY id", args)]

    def rating_baseline(self, tenant: str, window: int, prior: float = 0.5) -> float:
        """The tenant's running baseline: mean of its last `window` consumed ratings, with one
        pseudo-rating at `prior` so a new tenant's first rating is not its own baseline."""
        rows = self._query(
            "SELECT reward FROM feedback WHERE tenant = ? AND reward IS NOT NULL AND consumed_version IS NOT NULL "
            "ORDER BY id DESC LIMIT ?",
            (tenant, window),
        )
        rewards = [float(r[0]) for r in rows]
        return (prior + sum(rewards)) / (1 + len(rewards))

    # ---- adapter versions ---------------------------------------------------------------------
    def record_adapter(
        self,
        record: AdapterRecord,
        consumed: Sequence[int],
        consolidated: Sequence[str] = (),
        forgotten: Sequence[str] = (),
    ) -> None:
        """A candidate version and the guard's verdict, the feedback it consumed, the memory items it
        consolidated and the deleted ones whose absence it trained, in one transaction: a crash
        between them can neither lose nor double-count feedback, nor mark items consolidated into
        (or unlearned by) a version the store does not know."""
        with self._tx() as db:
            db.execute(
                f"INSERT INTO adapter_versions ({_ADAPTER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (tenant, version) DO UPDATE SET status = excluded.status, path = excluded.path, "
                "created = excluded.created, reason = excluded.reason, metrics = excluded.metrics",
                (record.tenant, record.version, AdapterStatus(record.status).value, record.path,
                 record.created or time.time(), record.reason, json.dumps(record.metrics)),
            )  # fmt: skip
            if consumed:
                db.executemany(
                    "UPDATE feedback SET consumed_version = ? WHERE id = ? AND tenant = ?",
                    [(record.version, i, record.tenant) for i in consumed],
                )
            self._mark(db, "consolidated_version", "consolidate", consolidated, record.version)
            self._mark(db, "forgotten_version", "unlearn", forgotten, record.version)

    def adapters(self, tenant: str | None = None, status: AdapterStatus | None = None) -> list[AdapterRecord]:
        """Adapter versions, oldest first."""
        sql, args = self._where(tenant=tenant, status=None if status is None else AdapterStatus(status).value)
        rows = self._query(f"SELECT {_ADAPTER_COLUMNS} FROM adapter_versions{sql} ORDER BY tenant, version", args)
        return [_adapter(r) for r in rows]

    def next_version(self, tenant: str) -> int:
        (v,) = self._query("SELECT COALESCE(MAX(version), 0) FROM adapter_versions WHERE tenant = ?", (tenant,))[0]
        return int(v) + 1

    def live_versions(self) -> dict[str, list[AdapterRecord]]:
        """tenant -> its live versions, newest first (a corrupt newest falls back to the next)."""
        out: dict[str, list[AdapterRecord]] = {}
        for rec in reversed(self.adapters(status=AdapterStatus.LIVE)):
            out.setdefault(rec.tenant, []).append(rec)
        return out

    # ---- monitor flags ------------------------------------------------------------------------
    @staticmethod
    def _insert_flags(db: Backend, flags: Sequence[Flag], now: float) -> None:
        if flags:
            db.executemany(
                "INSERT INTO flags (source, idx, tenant, kind, detail, created) VALUES (?, ?, ?, ?, ?, ?)",
                [(f.source, f.index, f.tenant, f.kind, f.detail, f.created or now) for f in flags],
            )

    def add_flags(self, flags: Sequence[Flag]) -> None:
        with self._tx() as db:
            self._insert_flags(db, flags, time.time())

    def flags(self, tenant: str | None = None, after: int = 0, limit: int = 100) -> list[tuple[int, Flag]]:
        sql, args = self._where(tenant=tenant)
        sql = (sql + " AND" if sql else " WHERE") + " id > ?"
        rows = self._query(
            f"SELECT id, source, idx, tenant, kind, detail, created FROM flags{sql} ORDER BY id LIMIT ?",
            [*args, after, limit],
        )
        return [(r[0], Flag(r[1], r[2], r[3], r[4], r[5], r[6])) for r in rows]

    @staticmethod
    def _where(**filters: Any) -> tuple[str, list[Any]]:
        parts = [(f"{k} = ?", v) for k, v in filters.items() if v is not None]
        if not parts:
            return "", []
        return " WHERE " + " AND ".join(p for p, _ in parts), [v for _, v in parts]


def _edit(op: str, item_id: str, detail: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    return (
        "INSERT INTO memory_edits (time, op, item_id, detail) VALUES (?,?,?,?)",
        (time.time(), op, item_id, json.dumps(detail)),
    )


def _unreadable(location: str, exc: Exception) -> StoreError:
    return StoreError(
        f"experience store {location} cannot be opened ({exc})",
        "it may be corrupt or not a lifelong store; move it aside and start a new run",
    )


def episode_summary(ep: Episode) -> dict[str, Any]:
    """A JSON-friendly view of an episode for reports (no token ids)."""
    d = asdict(ep)
    d["turns"] = [{"observation": t.observation, "answer": t.completion.answer, "reward": t.reward} for t in ep.turns]
    return d


# The serving store of lifelong before schema 3 (`<serve folder>/serve.sqlite`, its own user_version 1):
# table -> (columns there, table and columns here). Rows keep their ids, so feedback stays linked.
_SERVE_TABLES: dict[str, tuple[str, str]] = {
    "requests": (f"{_REQUEST_COLUMNS}, completed", f"requests ({_REQUEST_COLUMNS}, completed)"),
    "choices": ("request_id, idx, completion", "choices (request_id, idx, completion)"),
    "feedback": (_FEEDBACK_COLUMNS, f"feedback ({_FEEDBACK_COLUMNS})"),
    "adapters": (_ADAPTER_COLUMNS, f"adapter_versions ({_ADAPTER_COLUMNS})"),
    "flags": (
        "id, request_id, idx, tenant, kind, detail, created",
        "flags (id, source, idx, tenant, kind, detail, created)",
    ),
}


def import_serve_store(old: Path, store: ExperienceStore) -> dict[str, int]:
    """Carry a serving store of the old separate schema into `store`, then rename it to
    `<name>.migrated` (kept, never deleted). One transaction, and rows already present are skipped,
    so a crash at any point is mended by running it again. Returns rows read per table."""
    db = sqlite3.connect(old)  # not read-only: a WAL left by a kill -9 must be replayed first
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not set(_SERVE_TABLES) <= tables or int(db.execute("PRAGMA user_version").fetchone()[0]) != 1:
            raise StoreError(
                f"{old} is not a serving store of lifelong's old schema",
                "move it aside; lifelong serve keeps its data in experience.sqlite now",
            )
        rows = {t: db.execute(f"SELECT {cols} FROM {t}").fetchall() for t, (cols, _) in _SERVE_TABLES.items()}
        model = db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
    finally:
        db.close()
    with store._tx() as tx:
        for table, (_, into) in _SERVE_TABLES.items():
            if rows[table]:
                marks = ",".join("?" * len(rows[table][0]))
                tx.executemany(f"INSERT INTO {into} VALUES ({marks}) ON CONFLICT DO NOTHING", rows[table])
        tx.follow_ids("feedback")
        tx.follow_ids("flags")
        if model is not None:
            tx.execute("INSERT INTO store_meta (key, value) VALUES ('model', ?) ON CONFLICT DO NOTHING", (model[0],))
    old.rename(old.with_name(old.name + ".migrated"))
    return {t: len(r) for t, r in rows.items()}
