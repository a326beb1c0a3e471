"""Many studies in one transaction, each stored as if alone.

A batch's studies get the same resources, versions and index rows as one transaction each
would give them, but the index rows and versions of the whole batch are written at its end
(COPY on PostgreSQL), where one INSERT per row costs as much as the rest of a study; what its
studies look up first may be read for all of them at once (`ahead`); and the batch commits
once, without waiting for the disk (engine.commit_without_waiting_for_disk). Loading the
benchmarks' 40,000 studies takes minutes instead of an hour.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from app.store.engine import bulk_insert, commit_without_waiting_for_disk, one_batch_at_a_time

#: Connection.info key under which a batch collects, until it ends, the rows nothing in it reads
#: back: index rows under (rtype, id), version rows under (rtype, id, version)
_PENDING = "imaging-facade.pending-rows"
#: Connection.info key under which a batch keeps what it read ahead for its studies
_AHEAD = "imaging-facade.read-ahead"

#: rows of one table, as column -> value dicts
TableRows = tuple[type[SQLModel], list[dict[str, Any]]]
#: what a batch writes at its end: (rtype, id) or (rtype, id, version) -> the rows of each table
Pending = dict[tuple[str | int, ...], list[TableRows]]


@contextmanager
def batch(engine: Engine) -> Iterator[Connection]:
    """One transaction for many studies; its pending rows are written when it ends."""
    with engine.begin() as conn:
        commit_without_waiting_for_disk(conn)
        one_batch_at_a_time(conn)
        pending: Pending = {}
        conn.info[_PENDING] = pending
        conn.info[_AHEAD] = {}
        try:
            yield conn
        finally:
            del conn.info[_PENDING]
            del conn.info[_AHEAD]
        by_table: dict[type[SQLModel], list[dict[str, Any]]] = {}
        for tables in pending.values():
            for table, values in tables:
                by_table.setdefault(table, []).extend(values)
        for table, values in by_table.items():
            bulk_insert(conn, table, values)


def pending(conn: Connection) -> Pending | None:
    """The rows the batch on `conn` writes at its end (None outside a batch): key -> [(table, rows)]."""
    return conn.info.get(_PENDING)


def ahead(conn: Connection) -> dict | None:
    """What the batch on `conn` read ahead, by key (None outside a batch)."""
    return conn.info.get(_AHEAD)


@contextmanager
def savepoint(conn: Connection) -> Iterator[Connection]:
    """A part of a batch that may fail alone: on an exception its writes are undone (the rows
    waiting for the end of the batch too) and the exception goes on, while the rest of the
    batch stays.

    Open it after the batch has written something: Python's sqlite3 begins a transaction at
    the first write, and a SAVEPOINT before that would begin one of its own, which its
    RELEASE would commit.
    """
    rows = pending(conn)
    saved = dict(rows) if rows is not None else {}
    try:
        with conn.begin_nested():
            yield conn
    except BaseException:
        if rows is not None:
            rows.clear()
            rows.update(saved)
        raise
