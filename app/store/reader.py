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


def _cancelled(exc: Exception) -> bool:
    """Whether PostgreSQL cancelled the statement (SQLSTATE 57014 query_canceled: its statement
    timeout, or a cancel request)."""
    return getattr(exc, "sqlstate", None) == "57014"


def _close(connections: list[Connection]) -> None:
    while connections:
        with contextlib.suppress(*connection_errors()):  # already broken; nothing more to do
            connections.pop().close()


class TooCostly(Exception):
    """The database refused or cancelled a statement for what it would cost; the message says what."""


class StatementTimeout(TooCostly):
    """A statement ran longer than the reader's statement timeout and was cancelled."""

    def __init__(self, seconds: float):
        super().__init__(f"the search took longer than the {seconds:g} s one statement may run here")
        self.seconds = seconds


def _too_deep(exc: Exception) -> bool:
    """SQLite's parser refuses subqueries nested beyond its stack (about four levels of chain)."""
    return isinstance(exc, sqlite3.OperationalError) and "parser stack overflow" in str(exc)


def _broken(conn: Connection) -> bool:
    """Whether a PostgreSQL connection is known to be dead (psycopg marks it once a read or
    write on it failed); asks nothing of the server."""
    return not isinstance(conn, sqlite3.Connection) and (conn.closed or conn.broken)


class Reader:
    """`statement_timeout`: seconds one statement may run on PostgreSQL before it is cancelled
    (StatementTimeout); None: no limit (a sync's reads)."""

    def __init__(self, url: str, statement_timeout: float | None = None):
        self._url = make_url(url)
        self._statement_timeout = statement_timeout
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
        if self._statement_timeout is not None:
            # for the session (autocommit): every statement of this connection
            pg.execute(f"SET statement_timeout = {int(self._statement_timeout * 1000)}")
        return pg

    @property
    def connection(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and _broken(conn):
            self.reset()
            conn = None
        if conn is None:
            conn = self._local.conn = self._connect()
            self._connections.append(conn)
        return conn

    def _sql(self, sql: str) -> str:
        return sql if self.is_sqlite else sql.replace("?", "%s")

    def all(self, sql: str, params: tuple | list = (), any_values: bool = False) -> list[tuple[Any, ...]]:
        """Every row of one statement. A connection found dead by this statement (the server
        restarted, or an administrator ended the session) is replaced and the statement run
        once more: it failed before it returned a row, and a read is safe to repeat.

        On PostgreSQL a statement is planned for its values each time it runs (sent unprepared),
        unless `any_values` says one plan serves every value: then it is prepared on this
        connection and PostgreSQL may keep one plan for it (a generic plan). Planning for the
        values is what a search that ANDs clauses needs: planned once for any values, PostgreSQL
        cannot tell a narrow value from a wide one, and drove `started=ge<last week>&modality=CT`
        from every CT study (a third of the store) instead of the week's few, 442 ms instead of
        3 ms at 15,000 studies, and growing with the store. A lookup by a key (a resource by id,
        a patient's studies) is one index probe whatever the value, and planning it again on
        every run cost more than running it (0.5 ms of the server's time against 0.1 ms)."""
        return self._all(sql, params, any_values, retry=True)

    def _all(self, sql: str, params: tuple | list, any_values: bool, retry: bool) -> list[tuple[Any, ...]]:
        conn = self.connection
        try:
            if isinstance(conn, sqlite3.Connection):
                return conn.execute(sql, tuple(params)).fetchall()
            # binary results: stored JSON arrives as its bytes, not as hex text twice its
            # size to decode (a page of 50 studies is megabytes). An unprepared statement is
            # planned for its values whatever the session's plan_cache_mode (a one-off plan)
            return conn.execute(self._sql(sql), tuple(params), prepare=any_values, binary=True).fetchall()
        except Exception as exc:
            lost = _broken(conn)
            self.reset()
            if lost and retry:
                return self._all(sql, params, any_values, retry=False)
            if not lost and _cancelled(exc) and self._statement_timeout is not None:
                raise StatementTimeout(self._statement_timeout) from None
            if _too_deep(exc):
                raise TooCostly("the search nests more subqueries than SQLite can parse") from None
            raise

    def one(self, sql: str, params: tuple | list = (), any_values: bool = False) -> tuple[Any, ...] | None:
        rows = self.all(sql, params, any_values)
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
