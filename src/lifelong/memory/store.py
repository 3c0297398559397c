"""The experience store: every episode the agent plays, durable before it is learned from.

SQLite in WAL mode with `synchronous=FULL`: a committed episode survives kill -9 of the process
(and power loss). Episodes of one step are written in one transaction, so a crash leaves either
the whole step or none of it. The schema is versioned; `migrate` upgrades older files in place
and refuses files written by a newer lifelong with a clear error.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lifelong.errors import LifelongError
from lifelong.types import Completion, Episode, MemoryItem, StopReason, Turn

SCHEMA_VERSION = 2

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE episodes (
        id TEXT PRIMARY KEY,
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


class SQLiteStore:
    """Episodes in one SQLite file. Safe to open from several processes (WAL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"experience store {self.path} cannot be opened ({exc})",
                "it may be corrupt or not a lifelong store; move it aside and start a new run",
            ) from exc

    def _migrate(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"experience store {self.path} has schema version {version}, "
                f"newer than this lifelong ({SCHEMA_VERSION})",
                "upgrade lifelong (pip install -U lifelong) to read it",
            )
        for v in range(version + 1, SCHEMA_VERSION + 1):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                # executescript() would commit on its own; run statement by statement inside our transaction
                for statement in filter(str.strip, _MIGRATIONS[v].split(";")):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={v}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(f"INSERT INTO episodes VALUES ({','.join('?' * 18)})", rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return len(rows)

    # ---- memory items -------------------------------------------------------------------------
    def add_memory(self, item: MemoryItem) -> None:
        self._write(
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
        exists = self._db.execute("SELECT 1 FROM memory_items WHERE id = ?", (item_id,)).fetchone()
        if not exists:
            return False
        self._write(
            [("DELETE FROM memory_items WHERE id = ?", (item_id,)), _edit("forget", item_id, {"reason": reason})]
        )
        return True

    def record_memory_use(self, item_id: str, won: bool) -> None:
        self._write(
            [
                ("UPDATE memory_items SET uses = uses + 1, wins = wins + ? WHERE id = ?", (int(won), item_id)),
                _edit("use", item_id, {"won": won}),
            ]
        )

    def memory_items(self, task: str | None = None) -> list[MemoryItem]:
        sql, args = self._where(task=task)
        columns = "id, kind, task, key, text, provenance, created, uses, wins"
        rows = self._db.execute(f"SELECT {columns} FROM memory_items{sql} ORDER BY created", args)
        return [MemoryItem(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6], r[7], r[8]) for r in rows]

    def memory_edits(self) -> list[tuple[str, str, dict[str, Any]]]:
        rows = self._db.execute("SELECT op, item_id, detail FROM memory_edits ORDER BY seq")
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

    def _write(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Run statements in one transaction: all or nothing."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for sql, args in statements:
                self._db.execute(sql, args)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    # ---- reading ------------------------------------------------------------------------------
    def count(self, run_id: str | None = None, split: str | None = None) -> int:
        sql, args = self._where(run_id=run_id, split=split)
        return int(self._db.execute(f"SELECT COUNT(*) FROM episodes{sql}", args).fetchone()[0])

    def ids(self, run_id: str | None = None) -> set[str]:
        sql, args = self._where(run_id=run_id)
        return {r[0] for r in self._db.execute(f"SELECT id FROM episodes{sql}", args)}

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
            f"FROM episodes{sql} ORDER BY rowid"
        )
        for row in self._db.execute(query, args):
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


def episode_summary(ep: Episode) -> dict[str, Any]:
    """A JSON-friendly view of an episode for reports (no token ids)."""
    d = asdict(ep)
    d["turns"] = [{"observation": t.observation, "answer": t.completion.answer, "reward": t.reward} for t in ep.turns]
    return d
