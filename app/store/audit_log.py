"""The audit trail's own writes and reads: plain SQL on one DB-API connection per thread.

Every answered request writes one AuditEvent before its response leaves, so the write is on
the hot path: one short transaction (the event row and its few lookup rows in one
`executemany`), without SQLAlchemy's statement building. The tables are `audit_event` and
`audit_index` (tables.py), never `resource`.
"""
from __future__ import annotations

import sqlite3

from app.store.reader import Reader


class AuditLog(Reader):
    """A Reader whose connections may write: the audit tables only."""

    def _connect(self):
        if self.is_sqlite:
            conn = sqlite3.connect(self._url.database, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            return conn
        conn = super()._connect()
        # the event is in the database, visible to every reader, before the response leaves;
        # waiting for the WAL to reach the disk as well would triple the cost of a read
        # (~3.5 ms of fsync per request); a database crash may lose the last few hundred ms
        conn.execute("SET synchronous_commit TO off")
        return conn

    def write(self, event_id: str, recorded: int, outcome: str, content: bytes,
              index: list[tuple[str, str]]) -> None:
        """Store one event and its lookup rows (param, value) in one transaction."""
        conn = self.connection
        try:
            if self.is_sqlite:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO audit_event (id, recorded, outcome, content) VALUES (?, ?, ?, ?)",
                             (event_id, recorded, outcome, content))
                conn.executemany("INSERT INTO audit_index (event_id, param, value) VALUES (?, ?, ?)",
                                 [(event_id, p, v) for p, v in index])
                conn.execute("COMMIT")
            else:  # one statement, so one round trip and one transaction
                rows = ", ".join(["(%s, %s, %s)"] * len(index))
                conn.execute("WITH event AS (INSERT INTO audit_event (id, recorded, outcome, content) "
                             f"VALUES (%s, %s, %s, %s)) INSERT INTO audit_index (event_id, param, value) VALUES {rows}",
                             [event_id, recorded, outcome, content, *(x for p, v in index for x in (event_id, p, v))])
        except Exception:
            self.reset()
            raise

    def reset(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                if self.is_sqlite and conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.close()
            except Exception:  # already broken; nothing more to do
                pass
