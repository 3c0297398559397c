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
from lifelong.types import Completion, Episode, StopReason, Turn

SCHEMA_VERSION = 1

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

    # ---- reading ------------------------------------------------------------------------------
    def count(self, run_id: str | None = None, split: str | None = None) -> int:
        sql, args = self._where(run_id=run_id, split=split)
        return int(self._db.execute(f"SELECT COUNT(*) FROM episodes{sql}", args).fetchone()[0])

    def ids(self, run_id: str | None = None) -> set[str]:
        sql, args = self._where(run_id=run_id)
        return {r[0] for r in self._db.execute(f"SELECT id FROM episodes{sql}", args)}

    def episodes(self, run_id: str | None = None, step: int | None = None, split: str | None = None) -> list[Episode]:
        return list(self.iter_episodes(run_id=run_id, step=step, split=split))

    def iter_episodes(
        self, run_id: str | None = None, step: int | None = None, split: str | None = None
    ) -> Iterator[Episode]:
        sql, args = self._where(run_id=run_id, step=step, split=split)
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


def episode_summary(ep: Episode) -> dict[str, Any]:
    """A JSON-friendly view of an episode for reports (no token ids)."""
    d = asdict(ep)
    d["turns"] = [{"observation": t.observation, "answer": t.completion.answer, "reward": t.reward} for t in ep.turns]
    return d
