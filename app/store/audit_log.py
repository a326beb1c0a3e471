"""The audit trail's own writes and reads: plain SQL on one DB-API connection per thread.

Every answered request records one AuditEvent before its response leaves, so recording is
on the hot path: it is one append to this process's spool (app/store/audit_spool.py). A
background thread moves the spooled events into the tables `audit_event` and `audit_index`
(tables.py; never `resource`) every `DRAIN_SECONDS`, many per transaction, and an AuditEvent
search first stores this process's events, so a trail read through the same server is
never behind. Events spooled by other server processes are searchable within a drain period.
If the database cannot take them, they stay on disk and the next drain tries again.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sqlite3
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from app.store.audit_spool import AuditSpool, Event
from app.store.reader import Reader, connection_errors

if TYPE_CHECKING:
    from app.store.reader import Connection

log = logging.getLogger(__name__)

#: how often spooled events are moved into the tables
DRAIN_SECONDS = 0.5
#: drains with nothing to store before the thread ends
IDLE_DRAINS = 10

#: audit logs with a drain thread, stored and stopped at exit (`close_all`)
_open_logs: weakref.WeakSet = weakref.WeakSet()


def close_all() -> None:
    """Store what every audit log of this process spooled, and stop their drain threads."""
    for audit_log in list(_open_logs):
        audit_log.close()


atexit.register(close_all)


class AuditLog(Reader):
    """A Reader whose connections may write: the audit tables only."""

    def __init__(self, url: str, spool_dir: Path):
        super().__init__(url)
        self.spool = AuditSpool(spool_dir, url, self._insert)
        self._drainer_lock = threading.Lock()
        self._drainer_pid: int | None = None  # the process whose drain thread runs
        self._stop = threading.Event()  # the running drain thread's

    def _connect(self) -> Connection:
        if self.is_sqlite:
            # a SQLite URL names its database file
            assert self._url.database is not None
            conn = sqlite3.connect(self._url.database, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn
        pg = super()._connect()
        # the events are on disk in the spool already; the database need not wait for its WAL
        pg.execute("SET synchronous_commit TO off")
        return pg

    def write(self, event_id: str, recorded: int, outcome: str, content: bytes, index: list[tuple[str, str]]) -> None:
        """Record one event and its lookup rows (param, value): on disk when this returns."""
        self.spool.append(event_id, recorded, outcome, content, index)
        with self._drainer_lock:  # the drain thread decides under it whether to end
            if self._drainer_pid != os.getpid():
                self._drainer_pid, self._stop = os.getpid(), threading.Event()
                _open_logs.add(self)
                threading.Thread(
                    target=self._drain_while_busy, args=(self._stop,), name="audit-drain", daemon=True
                ).start()

    def flush(self) -> int:
        """Store every event spooled so far by this process (and any a dead process left)."""
        return self.spool.drain()

    def _drain_while_busy(self, stop: threading.Event) -> None:
        """Drain every DRAIN_SECONDS; after IDLE_DRAINS drains with nothing to do, let go of the
        connection and end (the next event starts a new thread)."""
        failures = idle = 0
        while not stop.wait(min(DRAIN_SECONDS * 2**failures, 30)):
            try:
                idle = 0 if self.spool.drain() else idle + 1
                failures = 0
            except Exception as err:  # noqa: BLE001 - the events stay spooled; try again later
                failures = min(failures + 1, 6)
                log.error("audit events could not be stored yet (kept in the spool, retrying): %s", type(err).__name__)
                self.reset()
            with self._drainer_lock:
                if idle >= IDLE_DRAINS and not self.spool.pending():
                    self._drainer_pid = None
                    break
        self.reset()

    def close(self) -> None:
        """Stop the drain thread and store what is spooled (a later event starts a new thread)."""
        with self._drainer_lock:
            self._stop.set()
            self._drainer_pid = None
        self.spool.close()
        self.reset()

    def _insert(self, events: list[Event], may_exist: bool) -> None:
        """Store events in one transaction; `may_exist`: skip those a crashed drain stored already."""
        conn = self.connection
        try:
            if isinstance(conn, sqlite3.Connection):
                conn.execute("BEGIN IMMEDIATE")
                if may_exist:
                    events = [
                        e
                        for e in events
                        if conn.execute("SELECT 1 FROM audit_event WHERE id = ?", (e[0],)).fetchone() is None
                    ]
                conn.executemany(
                    "INSERT INTO audit_event (id, recorded, outcome, content) VALUES (?, ?, ?, ?)",
                    [e[:4] for e in events],
                )
                conn.executemany(
                    "INSERT INTO audit_index (event_id, param, value) VALUES (?, ?, ?)",
                    [(e[0], p, v) for e in events for p, v in e[4]],
                )
                conn.execute("COMMIT")
            else:
                with conn.transaction(), conn.cursor() as cur:
                    if may_exist:
                        cur.execute("SELECT id FROM audit_event WHERE id = ANY(%s)", ([e[0] for e in events],))
                        stored = {r[0] for r in cur.fetchall()}
                        events = [e for e in events if e[0] not in stored]
                    # COPY: a few µs per event, where executemany spends ~30 µs adapting each row
                    with cur.copy("COPY audit_event (id, recorded, outcome, content) FROM STDIN") as copy:
                        for e in events:
                            copy.write_row(e[:4])
                    with cur.copy("COPY audit_index (event_id, param, value) FROM STDIN") as copy:
                        for e in events:
                            for param, value in e[4]:
                                copy.write_row((e[0], param, value))
        except Exception:
            self.reset()
            raise

    def reset(self) -> None:
        """Drop this thread's connection, rolling back what a failed drain left open."""
        conn = getattr(self._local, "conn", None)
        if isinstance(conn, sqlite3.Connection) and conn.in_transaction:
            with contextlib.suppress(*connection_errors()):  # already broken; nothing more to do
                conn.execute("ROLLBACK")
        super().reset()
