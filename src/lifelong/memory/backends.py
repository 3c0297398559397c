"""The two databases the experience store runs on, behind one small interface.

SQLite (one file, WAL mode, `synchronous=FULL`: a committed row survives kill -9 and power loss) and
PostgreSQL (a `postgresql://` URL, for stores shared by several processes or machines). The store
writes one SQL dialect (`?` placeholders, SQLite DDL); what differs is translated here, and so is the
full-text index of memory items: SQLite's FTS5 ranked by BM25, PostgreSQL's `to_tsvector`/`ts_rank`.
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

    # ---- the full-text index of memory items ----------------------------------------------------
    def create_text_index(self) -> None:
        """Create the index and index every retrievable item already stored (a migration)."""
        raise NotImplementedError

    def index_text(self, item_id: str, text: str) -> None:
        """Make a new item findable (inside the transaction that stores it)."""

    def unindex_text(self, item_ids: Sequence[str]) -> None:
        """Drop items from the index (deleted or superseded: their text is never retrieved again)."""

    def search_sql(self, columns: str, terms: Sequence[str]) -> tuple[str, list[Any]]:
        """SQL selecting `columns` (of memory_items m) and a score (higher is better) of the items
        matching any of `terms`, best first; two placeholders are left: tenant, then the limit."""
        raise NotImplementedError

    def term_sql(self, term: str) -> tuple[str, list[Any]]:
        """`FROM ... WHERE ...` of the live items (m) that contain `term` (as the index stems it), ending
        in the WHERE clause so that a caller can add `AND ...`; one placeholder is left: tenant."""
        raise NotImplementedError

    def indexed_terms(self, terms: Sequence[str]) -> list[str]:
        """The `terms` the index can find at all, in order (PostgreSQL drops its own stopwords)."""
        return list(terms)

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

    # A standalone FTS5 table holding only retrievable items; porter stemming lets "offices" find
    # "office". bm25() is lower-is-better, so the score is its negation.
    def create_text_index(self) -> None:
        self.db.execute(
            "CREATE VIRTUAL TABLE memory_fts USING fts5(item_id UNINDEXED, text, tokenize='porter unicode61')"
        )
        self.db.execute(
            "INSERT INTO memory_fts (item_id, text) SELECT id, text FROM memory_items "
            "WHERE deleted = 0 AND superseded_by IS NULL"
        )

    def index_text(self, item_id: str, text: str) -> None:
        self.db.execute("INSERT INTO memory_fts (item_id, text) VALUES (?, ?)", (item_id, text))

    def unindex_text(self, item_ids: Sequence[str]) -> None:
        self.db.executemany("DELETE FROM memory_fts WHERE item_id = ?", [(i,) for i in item_ids])

    def search_sql(self, columns: str, terms: Sequence[str]) -> tuple[str, list[Any]]:
        match = " OR ".join(f'"{t}"' for t in terms)  # terms are [a-z0-9]+: nothing to escape
        sql = (
            f"SELECT {columns}, -bm25(memory_fts) AS score FROM memory_fts "
            "JOIN memory_items m ON m.id = memory_fts.item_id "
            "WHERE memory_fts MATCH ? AND m.tenant = ? AND m.deleted = 0 AND m.superseded_by IS NULL "
            "ORDER BY bm25(memory_fts), m.created DESC LIMIT ?"
        )
        return sql, [match]

    def term_sql(self, term: str) -> tuple[str, list[Any]]:
        sql = (
            "FROM memory_fts JOIN memory_items m ON m.id = memory_fts.item_id "
            "WHERE memory_fts MATCH ? AND m.tenant = ? AND m.deleted = 0 AND m.superseded_by IS NULL"
        )
        return sql, [f'"{term}"']

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

    # An expression index over the table itself: it follows inserts and deletes, so indexing and
    # unindexing are no-ops; deleted and superseded rows are filtered in the query.
    def create_text_index(self) -> None:
        self.db.execute("CREATE INDEX memory_items_text ON memory_items USING GIN (to_tsvector('english', text))")

    def search_sql(self, columns: str, terms: Sequence[str]) -> tuple[str, list[Any]]:
        sql = (
            f"SELECT {columns}, ts_rank(to_tsvector('english', m.text), q) AS score "
            "FROM memory_items m, to_tsquery('english', ?) q "
            "WHERE to_tsvector('english', m.text) @@ q AND m.tenant = ? AND m.deleted = 0 "
            "AND m.superseded_by IS NULL ORDER BY score DESC, m.created DESC LIMIT ?"
        )
        return sql, [" | ".join(terms)]

    def term_sql(self, term: str) -> tuple[str, list[Any]]:
        sql = (
            "FROM memory_items m WHERE to_tsvector('english', m.text) @@ to_tsquery('english', ?) "
            "AND m.tenant = ? AND m.deleted = 0 AND m.superseded_by IS NULL"
        )
        return sql, [term]

    # A word of the 'english' configuration's stopword list ("about", "not", ...) becomes an empty
    # query that matches nothing; it is not a rare word, just one the index does not keep.
    def indexed_terms(self, terms: Sequence[str]) -> list[str]:
        kept = []
        for term in terms:
            row = self.db.execute("SELECT numnode(to_tsquery('english', %s))", (term,)).fetchone()
            if row and row[0]:
                kept.append(term)
        return kept

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
