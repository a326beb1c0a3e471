"""The API's read path: plain SQL on one DB-API connection per thread, in autocommit.

Reads are the hot path (a bare Flask endpoint answers in ~0.3 ms on the machines this runs on),
and building and executing SQLAlchemy expressions cost more than the query itself. Writes, schema and
migrations stay with SQLAlchemy; reads here use SQL text with `?` placeholders that works
unchanged on SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any, TypeAlias

from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    import psycopg

    Connection: TypeAlias = sqlite3.Connection | psycopg.Connection[Any]


def connection_errors() -> tuple[type[Exception], ...]:
    """What closing a connection that already broke may raise. psycopg is imported only by a
    process that opens a PostgreSQL connection (a SQLite node never loads it); a reader's
    finalizer may run while that import is half done (the garbage collector runs anywhere),
    and then psycopg has no Error yet, nor any connection to close."""
    error = getattr(sys.modules.get("psycopg"), "Error", None)
    return (sqlite3.Error, OSError, error) if error else (sqlite3.Error, OSError)


def _close(connections: list[Connection]) -> None:
    while connections:
        with contextlib.suppress(*connection_errors()):  # already broken; nothing more to do
            connections.pop().close()


class Reader:
    def __init__(self, url: str):
        self._url = make_url(url)
        self._local = threading.local()
        self.is_sqlite = self._url.get_backend_name() == "sqlite"
        #: every connection this reader opened (one per thread), closed when it goes
        self._connections: list[Connection] = []
        weakref.finalize(self, _close, self._connections)

    def _connect(self) -> Connection:
        if self.is_sqlite:
            # a SQLite URL names its database file
            assert self._url.database is not None
            conn = sqlite3.connect(self._url.database, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA query_only=ON")
            return conn

        import psycopg

        url = self._url.set(drivername="postgresql")
        pg = psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)
        # psycopg prepares a statement run five times, and PostgreSQL then plans it once for any
        # values (a generic plan) when that plan's estimate looks no worse. For a search that
        # ANDs clauses it cannot tell a narrow value from a wide one then: `started=ge<last
        # week>&modality=CT` was driven from every CT study (a third of the store) instead of
        # the week's few, 442 ms instead of 3 ms at 15,000 studies, and growing with the store.
        # Planning each run for its values costs well under a millisecond.
        pg.execute("SET plan_cache_mode = force_custom_plan")
        return pg

    @property
    def connection(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            self._connections.append(conn)
        return conn

    def _sql(self, sql: str) -> str:
        return sql if self.is_sqlite else sql.replace("?", "%s")

    def all(self, sql: str, params: tuple | list = ()) -> list[tuple[Any, ...]]:
        try:
            conn = self.connection
            if isinstance(conn, sqlite3.Connection):
                return conn.execute(sql, tuple(params)).fetchall()
            # binary results: stored JSON arrives as its bytes, not as hex text twice its
            # size to decode (a page of 50 studies is megabytes)
            return conn.execute(self._sql(sql), tuple(params), binary=True).fetchall()
        except Exception:
            self.reset()
            raise

    def one(self, sql: str, params: tuple | list = ()) -> tuple[Any, ...] | None:
        rows = self.all(sql, params)
        return rows[0] if rows else None

    def reset(self) -> None:
        """Drop this thread's connection (after an error, e.g. the database restarted)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(ValueError):
                self._connections.remove(conn)
            _close([conn])

    def close(self) -> None:
        """Close every thread's connection (a later read opens a new one)."""
        _close(self._connections)
        self._local = threading.local()
