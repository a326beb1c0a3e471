"""Which watcher polls a source: one PostgreSQL advisory lock per source, held by a session of its own.

Several watchers (`sync --watch`, `serve` with `server.watch`) on one PostgreSQL store each ask
for every source's lock; the one that gets it polls that source, the others ask again every
second. A session-level advisory lock is held until its session ends (PostgreSQL 15 docs,
13.3.5 "Advisory Locks"), so it dies with its holder:

- a watcher that exits or is killed: the kernel closes its socket, the server ends the session
  at once and the lock is free;
- a host cut off from the database, or a frozen process: the server ends the session when no
  statement came for `idle_session_timeout`, or when its TCP keepalives go unanswered (both
  set on this session only). The holder pings every second, so neither fires while it lives.

The holder trusts a lock only for `TRUST` seconds after the start of its last successful ping,
less than either timeout: a holder cut off stops polling before the server can hand its lock
to another. A poll under way ends between studies; only a process frozen in the middle of one
finishes, once it runs again, the studies it was reading. Reading a study twice changes nothing.

On SQLite the store has one writing process: every source is held (`EveryLease`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from typing import Protocol

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from app.logsafe import describe

log = logging.getLogger(__name__)

#: seconds between pings of the lock session (and tries for the locks not held)
PING_EVERY = 1.0
#: seconds a lock is trusted after the start of the last ping that succeeded
TRUST = 4.0
#: the server ends a lock session silent this long (PostgreSQL 14+ `idle_session_timeout`)
IDLE_SESSION_TIMEOUT_MS = 10_000
#: TCP keepalive of the lock session, both ends: first probe after 5 s of silence, then one a
#: second; 3 unanswered probes end the connection (8 s). Unacknowledged data ends it after 6 s
#: (`tcp_user_timeout`, RFC 5482)
KEEPALIVE = {"keepalives_idle": 5, "keepalives_interval": 1, "keepalives_count": 3}
TCP_USER_TIMEOUT_MS = 6_000
#: the server settings of the lock session (PostgreSQL 15 docs, 20.3.1 and 20.11.1)
SESSION_SETTINGS = {
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": str(TCP_USER_TIMEOUT_MS),
    "statement_timeout": "5000",
}
#: a prefix hashed with each source's name, so the keys are the facade's own
KEY_PREFIX = b"imaging-facade watch\x00"


class Leases(Protocol):
    def holds(self, name: str) -> bool: ...

    def ready(self, timeout: float) -> None: ...

    def close(self) -> None: ...


class EveryLease:
    """One process writes an SQLite store: it polls every source."""

    def holds(self, name: str) -> bool:
        return True

    def ready(self, timeout: float) -> None:
        return None

    def close(self) -> None:
        return None


def lock_key(name: str) -> int:
    """The advisory lock key of a source: 64 bits of SHA-256 of its name (signed, as bigint)."""
    return int.from_bytes(hashlib.sha256(KEY_PREFIX + name.encode()).digest()[:8], "big", signed=True)


def _lock_ids(key: int) -> tuple[int, int]:
    """How pg_locks shows a bigint advisory key: (classid, objid), its high and low 32 bits."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


def watcher_name() -> str:
    """The lock session's application_name: which host and process hold a source (fits NAMEDATALEN)."""
    return f"imaging-facade watch {socket.gethostname()} {os.getpid()}"[:63]


class AdvisoryLeases:
    """The locks of `names`, taken and kept by a thread of their own on one dedicated session."""

    def __init__(self, url: str, names: list[str], ping_every: float = PING_EVERY, trust: float = TRUST):
        self.url = url
        self.keys = {name: lock_key(name) for name in names}
        self.ping_every = ping_every
        self.trust = trust
        self._held: frozenset[str] = frozenset()
        self._trusted_until = 0.0
        self._guard = threading.Lock()
        self._closed = threading.Event()
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._thread = threading.Thread(target=self._run, name="watch-leases", daemon=True)
        self._thread.start()

    def holds(self, name: str) -> bool:
        """Whether this process may poll `name` now."""
        with self._guard:
            return name in self._held and time.monotonic() < self._trusted_until

    def close(self) -> None:
        """Release every lock (the session ends)."""
        self._closed.set()
        self._thread.join(timeout=30)

    def ready(self, timeout: float) -> None:
        """Wait up to `timeout` for the first round of tries, so a starting watcher polls at once."""
        deadline = time.monotonic() + timeout
        while self._trusted_until == 0.0 and time.monotonic() < deadline and not self._closed.is_set():
            time.sleep(0.05)

    def _run(self) -> None:
        while not self._closed.is_set():
            self._round()
            self._closed.wait(self.ping_every)
        self._drop()

    def _round(self) -> None:
        started = time.monotonic()
        try:
            held = self._ping_and_take()
        except Exception as exc:  # noqa: BLE001 - the database is away: hold nothing, connect again next round
            if self._held:
                log.warning("watch: lost the database session holding the source locks: %s", describe(exc))
            self._set(frozenset(), 0.0)
            self._drop()
            return
        gained, lost = held - self._held, self._held - held
        for name in sorted(gained):
            log.info("watch: this process polls source %s now", name)
        for name in sorted(lost):
            log.warning("watch: source %s is no longer held by this process", name)
        self._set(held, started + self.trust)

    def _set(self, held: frozenset[str], trusted_until: float) -> None:
        with self._guard:
            self._held, self._trusted_until = held, trusted_until

    def _ping_and_take(self) -> frozenset[str]:
        conn = self._connection()
        rows = conn.execute(
            text(
                "SELECT classid::bigint, objid::bigint FROM pg_locks "
                "WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted"
            )
        ).all()
        granted = {(int(r[0]), int(r[1])) for r in rows}
        held = {name for name, key in self.keys.items() if _lock_ids(key) in granted}
        for name, key in self.keys.items():
            if name not in held and conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                held.add(name)
        return frozenset(held)

    def _connection(self) -> Connection:
        if self._conn is None:
            if self._engine is None:
                self._engine = create_engine(
                    self.url,
                    poolclass=NullPool,
                    isolation_level="AUTOCOMMIT",
                    connect_args={
                        "application_name": watcher_name(),
                        "connect_timeout": 5,
                        "keepalives": 1,
                        **KEEPALIVE,
                        "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
                    },
                )
            conn = self._engine.connect()
            try:
                for setting, value in SESSION_SETTINGS.items():
                    conn.execute(text("SELECT set_config(:s, :v, false)"), {"s": setting, "v": value})
                if int(conn.execute(text("SHOW server_version_num")).scalar_one()) >= 140000:
                    conn.execute(
                        text("SELECT set_config('idle_session_timeout', :v, false)"),
                        {"v": str(IDLE_SESSION_TIMEOUT_MS)},
                    )
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # noqa: BLE001 - a dead session is gone either way
                log.debug("watch: closing the lock session: %s", describe(exc))
        if self._closed.is_set() and self._engine is not None:
            self._engine.dispose()
            self._engine = None


def open_leases(url: str, names: list[str]) -> Leases:
    """The locks of `names` on a PostgreSQL store; on SQLite, every source."""
    if url.startswith("sqlite:"):
        return EveryLease()
    return AdvisoryLeases(url, names)


def holders(engine: Engine, names: list[str]) -> dict[str, str | None]:
    """Which watcher (host and process id) holds each source's lock, None if none; on SQLite, all None."""
    if engine.dialect.name != "postgresql":
        return dict.fromkeys(names)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT l.classid::bigint, l.objid::bigint, a.application_name FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        ).all()
    by_ids = {(int(r[0]), int(r[1])): r[2] for r in rows}
    return {name: by_ids.get(_lock_ids(lock_key(name))) for name in names}
