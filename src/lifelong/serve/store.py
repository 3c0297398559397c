"""The serving experience store: every request, completion, piece of feedback, adapter version and
monitor flag, durable before the client hears back.

Same pattern as `memory/store.py`: SQLite in WAL mode with `synchronous=FULL` (a committed row
survives kill -9 and power loss), one transaction per logical write (nothing half-written), a
schema versioned with `PRAGMA user_version` and upgraded by migrations in order; a file from a newer
lifelong is refused with a clear error. It is its own file (`<store>/serve.sqlite`) so a serving
deployment and `lifelong run` never force each other's migrations.

Two processes use it: the server writes requests, completions, feedback and flags; the learner
reads feedback, and writes adapter versions together with the feedback they consumed, in one
transaction, so a crash between the two never loses or double-counts feedback.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lifelong.errors import LifelongError
from lifelong.types import Completion, StopReason

SCHEMA_VERSION = 1

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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
    CREATE TABLE adapters (
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
        request_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        created REAL NOT NULL
    );
    """,
}


class StoreError(LifelongError):
    pass


@dataclass(frozen=True)
class ServedRequest:
    """A chat request as received, and (once answered) its choices."""

    id: str
    tenant: str
    model: str
    received: float
    body: dict[str, Any]
    prompt_ids: tuple[int, ...]
    generation: dict[str, Any]  # reasoning_effort, thinking budget, answer_tokens, temperature, seed
    status: str  # "received" | "completed" | "failed"
    adapter_version: int | None
    choices: tuple[Completion, ...] = ()


@dataclass(frozen=True)
class Feedback:
    """One feedback item: a rating (reward in [0, 1]) or a correction of one choice of a request."""

    id: int
    request_id: str
    index: int
    tenant: str
    kind: str  # "thumbs" | "score" | "correction"
    reward: float | None
    correction: str | None
    holdout: bool  # held-out corrections are probes for the gate, never trained on
    received: float
    consumed_version: int | None = None


@dataclass(frozen=True)
class AdapterRecord:
    """A candidate adapter version of a tenant and the gate's verdict on it."""

    tenant: str
    version: int
    status: str  # "live" | "rejected"
    path: str | None
    created: float
    reason: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class Flag:
    """Something the reasoning monitor noticed about one choice."""

    request_id: str
    index: int
    tenant: str
    kind: str  # "contradiction" | "reward_gaming"
    detail: str
    created: float = 0.0


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


class ServeStore:
    """The serving store. Thread-safe within a process (one connection behind a lock); several
    processes may open the same file (WAL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"serving store {self.path} cannot be opened ({exc})",
                "it may be corrupt or not a lifelong serving store; move it aside or pass another --store",
            ) from exc

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"serving store {self.path} has schema version {version}, newer than this lifelong ({SCHEMA_VERSION})",
                "upgrade lifelong to serve from it",
            )
        for v in range(version + 1, SCHEMA_VERSION + 1):
            with self._transaction():
                # executescript() would commit on its own; run statement by statement inside ours
                for statement in filter(str.strip, _MIGRATIONS[v].split(";")):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={v}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ServeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- meta ---------------------------------------------------------------------------------
    def claim_model(self, model: str) -> None:
        """Bind the store to one model; adapters of another model would not fit it."""
        with self._transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('model', ?)", (model,))
            elif row[0] != model:
                raise StoreError(
                    f"serving store {self.path} belongs to model {row[0]!r}, not {model!r}",
                    f"pass --model {row[0]} to serve it, or a new --store for the other model",
                )

    # ---- requests -----------------------------------------------------------------------------
    def add_request(
        self,
        id: str,
        tenant: str,
        model: str,
        body: dict[str, Any],
        prompt_ids: Sequence[int],
        generation: dict[str, Any],
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, 'received', NULL, NULL)",
                (
                    id,
                    tenant,
                    model,
                    time.time(),
                    json.dumps(body),
                    json.dumps(list(prompt_ids)),
                    json.dumps(generation),
                ),
            )

    def complete_request(
        self, id: str, completions: Sequence[Completion], adapter_version: int, flags: Sequence[Flag] = ()
    ) -> None:
        """The choices, the adapter that answered and the monitor's flags, in one transaction."""
        now = time.time()
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE requests SET status = 'completed', adapter_version = ?, completed = ? "
                "WHERE id = ? AND status = 'received'",
                (adapter_version, now, id),
            )
            if cur.rowcount != 1:
                raise StoreError(f"request {id} is not awaiting completion", "this is a bug in lifelong serve")
            db.executemany(
                "INSERT INTO choices VALUES (?, ?, ?)",
                [(id, i, json.dumps(completion_to_json(c))) for i, c in enumerate(completions)],
            )
            db.executemany(
                "INSERT INTO flags (request_id, idx, tenant, kind, detail, created) VALUES (?, ?, ?, ?, ?, ?)",
                [(f.request_id, f.index, f.tenant, f.kind, f.detail, f.created or now) for f in flags],
            )

    def fail_request(self, id: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE requests SET status = 'failed', completed = ? WHERE id = ?", (time.time(), id))

    def request(self, id: str) -> ServedRequest | None:
        rows = self._query(
            "SELECT id, tenant, model, received, body, prompt_ids, generation, status, adapter_version "
            "FROM requests WHERE id = ?",
            (id,),
        )
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
            status=r[7],
            adapter_version=r[8],
            choices=tuple(completion_from_json(json.loads(c[0])) for c in choices),
        )

    def count(self, table: str) -> int:
        if table not in {"requests", "choices", "feedback", "adapters", "flags"}:
            raise ValueError(f"no table {table}")
        return int(self._query(f"SELECT COUNT(*) FROM {table}")[0][0])

    # ---- feedback -----------------------------------------------------------------------------
    def add_feedback(
        self,
        request_id: str,
        index: int,
        tenant: str,
        kind: str,
        reward: float | None = None,
        correction: str | None = None,
        holdout_every: int = 0,
    ) -> Feedback:
        """Store one feedback item. Every `holdout_every`-th correction of a tenant is held out."""
        now = time.time()
        with self._transaction() as db:
            holdout = False
            if kind == "correction" and holdout_every:
                (n,) = db.execute(
                    "SELECT COUNT(*) FROM feedback WHERE tenant = ? AND kind = 'correction'", (tenant,)
                ).fetchone()
                holdout = (int(n) + 1) % holdout_every == 0
            cur = db.execute(
                "INSERT INTO feedback (request_id, idx, tenant, kind, reward, correction, holdout, received) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (request_id, index, tenant, kind, reward, correction, int(holdout), now),
            )
            fid = int(cur.lastrowid or 0)
        return Feedback(fid, request_id, index, tenant, kind, reward, correction, holdout, now)

    _FEEDBACK_COLUMNS = "id, request_id, idx, tenant, kind, reward, correction, holdout, received, consumed_version"

    @staticmethod
    def _feedback(r: tuple[Any, ...]) -> Feedback:
        return Feedback(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8], r[9])

    def pending_feedback(self, tenant: str, limit: int = 1000) -> list[Feedback]:
        """Feedback of a tenant not yet consumed by a learning round (held-out items excluded)."""
        rows = self._query(
            f"SELECT {self._FEEDBACK_COLUMNS} FROM feedback "
            "WHERE tenant = ? AND holdout = 0 AND consumed_version IS NULL ORDER BY id LIMIT ?",
            (tenant, limit),
        )
        return [self._feedback(r) for r in rows]

    def pending_summary(self) -> dict[str, tuple[int, float]]:
        """tenant -> (pending items, when the oldest arrived)."""
        rows = self._query(
            "SELECT tenant, COUNT(*), MIN(received) FROM feedback "
            "WHERE holdout = 0 AND consumed_version IS NULL GROUP BY tenant"
        )
        return {r[0]: (int(r[1]), float(r[2])) for r in rows}

    def holdout_feedback(self, tenant: str) -> list[Feedback]:
        rows = self._query(
            f"SELECT {self._FEEDBACK_COLUMNS} FROM feedback WHERE tenant = ? AND holdout = 1 ORDER BY id", (tenant,)
        )
        return [self._feedback(r) for r in rows]

    def feedback(self, tenant: str | None = None) -> list[Feedback]:
        sql = f"SELECT {self._FEEDBACK_COLUMNS} FROM feedback"
        rows = self._query(sql + " WHERE tenant = ? ORDER BY id", (tenant,)) if tenant else self._query(sql)
        return [self._feedback(r) for r in rows]

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

    # ---- adapters -----------------------------------------------------------------------------
    def record_adapter(self, record: AdapterRecord, consumed: Sequence[int]) -> None:
        """A candidate version and its verdict, and the feedback it consumed, in one transaction."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO adapters VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.tenant,
                    record.version,
                    record.status,
                    record.path,
                    record.created or time.time(),
                    record.reason,
                    json.dumps(record.metrics),
                ),
            )
            db.executemany(
                "UPDATE feedback SET consumed_version = ? WHERE id = ? AND tenant = ?",
                [(record.version, i, record.tenant) for i in consumed],
            )

    def adapters(self, tenant: str | None = None, status: str | None = None) -> list[AdapterRecord]:
        """Adapter versions, oldest first."""
        where, args = [], []
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        sql = "SELECT tenant, version, status, path, created, reason, metrics FROM adapters"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY tenant, version"
        return [AdapterRecord(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6])) for r in self._query(sql, args)]

    def next_version(self, tenant: str) -> int:
        (v,) = self._query("SELECT COALESCE(MAX(version), 0) FROM adapters WHERE tenant = ?", (tenant,))[0]
        return int(v) + 1

    def live_versions(self) -> dict[str, list[AdapterRecord]]:
        """tenant -> its live versions, newest first (a corrupt newest falls back to the next)."""
        out: dict[str, list[AdapterRecord]] = {}
        for rec in reversed(self.adapters(status="live")):
            out.setdefault(rec.tenant, []).append(rec)
        return out

    # ---- flags --------------------------------------------------------------------------------
    def flags(self, tenant: str | None = None, after: int = 0, limit: int = 100) -> list[tuple[int, Flag]]:
        sql = "SELECT id, request_id, idx, tenant, kind, detail, created FROM flags WHERE id > ?"
        args: list[Any] = [after]
        if tenant is not None:
            sql += " AND tenant = ?"
            args.append(tenant)
        rows = self._query(sql + " ORDER BY id LIMIT ?", [*args, limit])
        return [(r[0], Flag(r[1], r[2], r[3], r[4], r[5], r[6])) for r in rows]
