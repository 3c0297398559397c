"""The two databases the experience store runs on, behind one small interface.

SQLite (one file, WAL mode, `synchronous=FULL`: a committed row survives kill -9 and power loss) and
PostgreSQL (a `postgresql://` URL, for stores shared by several processes or machines). The store
writes one SQL dialect (`?` placeholders, SQLite DDL); what differs is translated here.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lifelong.errors import LifelongError


class StoreError(LifelongError):
    pass


class Backend:
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

    def follow_ids(self, table: str) -> None:
        """After rows were inserted with explicit ids, let new rows' ids continue after them
        (SQLite's AUTOINCREMENT does this itself)."""

    def set_version(self, version: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SQLiteBackend(Backend):
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


class PostgresBackend(Backend):
    def __init__(self, url: str) -> None:
        self.name = redact(url)
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

    def follow_ids(self, table: str) -> None:
        last = f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1"
        self.db.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {last}, false)")

    def version(self) -> int:
        row = self.db.execute("SELECT max(version) FROM lifelong_schema").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def set_version(self, version: int) -> None:
        self.db.execute("DELETE FROM lifelong_schema")
        self.db.execute("INSERT INTO lifelong_schema VALUES (%s)", (int(version),))

    def close(self) -> None:
        self.db.close()


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def is_database_url(location: str | Path) -> bool:
    return str(location).startswith(("postgresql://", "postgres://"))


def open_backend(location: str | Path) -> Backend:
    """SQLite for a path, PostgreSQL for a `postgresql://` URL."""
    return PostgresBackend(str(location)) if is_database_url(location) else SQLiteBackend(Path(location))
