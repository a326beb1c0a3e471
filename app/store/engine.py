"""The database engine, and what every write path shares (bulk rows, commit mode).

A new SQLite store is created private to its owner (`create_private`).

SQLite runs in WAL mode with `synchronous=NORMAL` (a commit is on disk as far as the operating
system is concerned; no fsync per transaction); PostgreSQL through psycopg 3 with a small pool
whose connections are checked before use.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, insert, make_url
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import SQLModel


def create_private(path: Path) -> None:
    """Create an SQLite store's file, and its directory if missing, for their owner only (0600,
    0700), as the audit spool is: the file holds every patient's data and the paging secret.
    SQLite gives its write-ahead log and shared memory the file's permissions. Whatever exists
    already is left as it is: an operator may have set it so on purpose."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:"):
        path = make_url(url).database
        if path and path != ":memory:" and not path.startswith("file:"):
            create_private(Path(path))
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def analyze(engine: Engine) -> None:
    """Refresh the planner's statistics after many writes.

    Without them PostgreSQL takes fresh index tables for nearly empty and nests the
    subqueries of a chained search as loops that rescan each other: minutes on a hundred
    resources. Autovacuum catches up within minutes; a sync does not leave it to chance.
    """
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE resource, idx_token, idx_string, idx_date, idx_reference")
        else:
            conn.exec_driver_sql("ANALYZE")


def bulk_insert(conn: Connection, table: type[SQLModel], values: list[dict[str, Any]]) -> None:
    """Insert many rows of one table: COPY on PostgreSQL (a few µs a row, where an INSERT per
    row costs tens), one executemany on SQLite."""
    if conn.dialect.name != "postgresql":
        conn.execute(insert(table), values)
        return
    columns = list(values[0])
    dbapi_connection = conn.connection.dbapi_connection
    assert dbapi_connection is not None  # `conn` is checked out of the pool: it has one
    cursor = dbapi_connection.cursor()
    with cursor.copy(f"COPY {table.__tablename__} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in values:
            copy.write_row([row[c] for c in columns])
    cursor.close()


def commit_without_waiting_for_disk(conn: Connection) -> None:
    """On PostgreSQL, let this transaction commit without waiting for its WAL flush.

    A sync commits once per batch of studies; waiting for the disk each time costs a flush
    per batch. Skipping the wait never reorders commits: after a crash the last few batches
    may be missing, and so is every later write, the source's cursor among them, so the next
    sync fetches them again. The automatic matching of a batch's patients commits with it,
    and is redone with it. Nothing else (audit, a person's identity decisions) commits this way.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")


#: the key of the lock a batch of studies holds on PostgreSQL (pg_advisory_xact_lock's two-key
#: form, whose key space is apart from the one-key form's): "imfa", then 1 for the batches
_BATCH_LOCK = (0x696D6661, 1)


def one_batch_at_a_time(conn: Connection) -> None:
    """On PostgreSQL, wait until no other process stores a batch of studies, and hold that
    until this transaction ends.

    Several processes store into one PostgreSQL store (the workers of a distributed sync, a
    watcher and the API's on-demand fetches): two batches with studies of one patient would
    each rebuild that Patient from the contributions they see, and the later commit would
    drop the other's. Batches one at a time store what one process would have stored, while
    the reading (the slow part) goes on in parallel. SQLite lets one writer in at a time anyway.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_BATCH_LOCK[0]}, {_BATCH_LOCK[1]})")
