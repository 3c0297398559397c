"""The experience store: every episode the agent plays, durable before it is learned from.

One `ExperienceStore` over two backends with the same SQL: SQLite (the default: one file, WAL mode,
`synchronous=FULL`, so a committed episode survives kill -9 and power loss) and PostgreSQL (a
`postgresql://` URL, for stores shared by several processes or machines). Episodes of one step are
written in one transaction, so a crash leaves either the whole step or none of it. The schema is
versioned; opening a store migrates an older one in place and refuses one written by a newer
lifelong with a clear error.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from lifelong.errors import LifelongError
from lifelong.types import Completion, Episode, MemoryItem, StopReason, Turn

SCHEMA_VERSION = 2

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
}


class StoreError(LifelongError):
    pass


def _turn_to_json(t: Turn) -> dict[str, Any]:
    c = t.completion
    return {
        "prompt_ids": list(t.prompt_ids),
        "observation": t.observation,
        "reward": t.reward,
        "completion": {
            "token_ids": list(c.token_ids),
            "logprobs": list(c.logprobs),
            "loss_mask": list(c.loss_mask),
            "reasoning": c.reasoning,
            "answer": c.answer,
            "stop": c.stop.value,
        },
    }


def _turn_from_json(d: dict[str, Any]) -> Turn:
    c = d["completion"]
    completion = Completion(
        tuple(c["token_ids"]),
        tuple(c["logprobs"]),
        tuple(c["loss_mask"]),
        c["reasoning"],
        c["answer"],
        StopReason(c["stop"]),
    )
    return Turn(tuple(d["prompt_ids"]), completion, d["observation"], d["reward"])


class _Backend:
    """What differs between SQLite and PostgreSQL: connecting, placeholders, DDL types, versions."""

    name = "store"

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def begin(self) -> None:
        self.execute("BEGIN")

    def ddl(self, statement: str) -> str:
        return statement

    def version(self) -> int:
        raise NotImplementedError

    def set_version(self, version: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _SQLite(_Backend):
    def __init__(self, path: Path) -> None:
        self.name = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self.db.execute(sql, tuple(args))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.db.executemany(sql, rows)

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")  # take the write lock now, not at the first write

    def version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def set_version(self, version: int) -> None:
        self.db.execute(f"PRAGMA user_version={int(version)}")

    def close(self) -> None:
        self.db.close()


class _Postgres(_Backend):
    def __init__(self, url: str) -> None:
        self.name = _redact(url)
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError("a PostgreSQL store needs the psycopg package", "pip install 'psycopg[binary]'") from exc
        try:
            self.db = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL at {self.name} ({str(exc).strip().splitlines()[0][:160]})",
                "check that the server is running and that host, port, user, password and database are right",
            ) from exc
        self.db.execute("CREATE TABLE IF NOT EXISTS lifelong_schema (version INTEGER NOT NULL)")

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self.db.execute(sql.replace("?", "%s"), tuple(args))  # type: ignore[arg-type]

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.db.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), rows)  # type: ignore[arg-type]

    def begin(self) -> None:
        self.db.execute("BEGIN")
        self.db.execute("SELECT pg_advisory_xact_lock(4716)")  # one writer at a time, like SQLite

    def ddl(self, statement: str) -> str:
        statement = statement.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
        return statement.replace(" REAL", " DOUBLE PRECISION").replace(" INTEGER", " BIGINT")

    def version(self) -> int:
        row = self.db.execute("SELECT max(version) FROM lifelong_schema").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def set_version(self, version: int) -> None:
        self.db.execute("DELETE FROM lifelong_schema")
        self.db.execute("INSERT INTO lifelong_schema VALUES (%s)", (int(version),))

    def close(self) -> None:
        self.db.close()


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def is_database_url(location: str | Path) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


class ExperienceStore:
    """Episodes and memory items. `ExperienceStore("runs/x/experience.sqlite")` or
    `ExperienceStore("postgresql://user@host/db")`; safe to open from several processes."""

    def __init__(self, location: str | Path) -> None:
        if is_database_url(location):
            self._b: _Backend = _Postgres(str(location))
        else:
            try:
                self._b = _SQLite(Path(location))
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
            statements = [self._b.ddl(x) for x in _MIGRATIONS[v].split(";") if x.strip()]
            self._transaction([(x, ()) for x in statements], then=partial(self._b.set_version, v))

    def close(self) -> None:
        self._b.close()

    def __enter__(self) -> ExperienceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(
        self,
        statements: Sequence[tuple[str, Sequence[Any]]],
        many: tuple[str, Sequence[Sequence[Any]]] | None = None,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Run statements in one transaction: all or nothing."""
        self._b.begin()
        try:
            if many is not None:
                self._b.executemany(*many)
            for sql, args in statements:
                self._b.execute(sql, args)
            if then is not None:
                then()
            self._b.execute("COMMIT")
        except BaseException:
            self._b.execute("ROLLBACK")
            raise

    # ---- writing ------------------------------------------------------------------------------
    def add(self, episodes: Iterable[Episode], *, run_id: str, step: int, model: str) -> int:
        """Store episodes in one transaction; returns how many were written."""
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
                )
            )
        columns = (
            "id, run_id, step, env, seed, group_id, split, prompt, reasoning, answer, reward, success, feedback, "
            "info, turns, model, adapter_version, created"
        )
        self._transaction([], many=(f"INSERT INTO episodes ({columns}) VALUES ({','.join('?' * 18)})", rows))
        return len(rows)

    # ---- memory items -------------------------------------------------------------------------
    def add_memory(self, item: MemoryItem) -> None:
        self._transaction(
            [
                (
                    "INSERT INTO memory_items VALUES (?,?,?,?,?,?,?,?,?)",
                    (item.id, item.kind, item.task, item.key, item.text, json.dumps(list(item.provenance)),
                     item.created, item.uses, item.wins),
                ),
                _edit("add", item.id, {"kind": item.kind, "task": item.task, "key": item.key}),
            ]
        )  # fmt: skip

    def forget_memory(self, item_id: str, reason: str) -> bool:
        """Delete one item (explicit forgetting); returns False if it did not exist."""
        exists = self._b.execute("SELECT 1 FROM memory_items WHERE id = ?", (item_id,)).fetchone()
        if not exists:
            return False
        self._transaction(
            [("DELETE FROM memory_items WHERE id = ?", (item_id,)), _edit("forget", item_id, {"reason": reason})]
        )
        return True

    def record_memory_use(self, item_id: str, won: bool) -> None:
        self._transaction(
            [
                ("UPDATE memory_items SET uses = uses + 1, wins = wins + ? WHERE id = ?", (int(won), item_id)),
                _edit("use", item_id, {"won": won}),
            ]
        )

    def memory_items(self, task: str | None = None) -> list[MemoryItem]:
        sql, args = self._where(task=task)
        columns = "id, kind, task, key, text, provenance, created, uses, wins"
        rows = self._b.execute(f"SELECT {columns} FROM memory_items{sql} ORDER BY created, id", args)
        return [MemoryItem(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6], r[7], r[8]) for r in rows]

    def memory_edits(self) -> list[tuple[str, str, dict[str, Any]]]:
        rows = self._b.execute("SELECT op, item_id, detail FROM memory_edits ORDER BY seq")
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

    # ---- reading ------------------------------------------------------------------------------
    def count(self, run_id: str | None = None, split: str | None = None) -> int:
        sql, args = self._where(run_id=run_id, split=split)
        return int(self._b.execute(f"SELECT COUNT(*) FROM episodes{sql}", args).fetchone()[0])

    def ids(self, run_id: str | None = None) -> set[str]:
        sql, args = self._where(run_id=run_id)
        return {r[0] for r in self._b.execute(f"SELECT id FROM episodes{sql}", args).fetchall()}

    def episode(self, episode_id: str) -> Episode | None:
        found = list(self.iter_episodes(id=episode_id))
        return found[0] if found else None

    def episodes(self, run_id: str | None = None, step: int | None = None, split: str | None = None) -> list[Episode]:
        return list(self.iter_episodes(run_id=run_id, step=step, split=split))

    def iter_episodes(
        self, run_id: str | None = None, step: int | None = None, split: str | None = None, id: str | None = None
    ) -> Iterator[Episode]:
        sql, args = self._where(run_id=run_id, step=step, split=split, id=id)
        query = (
            "SELECT id, env, seed, group_id, split, reward, success, info, turns, adapter_version, created "
            f"FROM episodes{sql} ORDER BY seq"
        )
        for row in self._b.execute(query, args).fetchall():
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
