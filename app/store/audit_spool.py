"""The audit trail's spool: an AuditEvent is on disk before its response leaves, in one append.

A database transaction per request (about 0.2-0.4 ms on SQLite, a round trip on PostgreSQL)
cost as much as the search it recorded. So each server process appends its events to a
segment file of its own, a single `write` of one line per event, which is what a SQLite
commit in WAL mode with `synchronous=NORMAL` amounts to as well (the operating system
holds both; neither waits for the disk). Moving segments into the audit tables, many
events per transaction, is `AuditSpool.drain` (app/store/audit_log.py calls it from a
background thread and before every AuditEvent search).

A segment is locked (`flock`) by the process writing it for as long as it is open. A
segment nobody holds was left by a process that died: any process sharing the directory
claims it, stores its events (skipping those already stored) and removes it. So a segment is
created under a hidden name that no claim looks at, locked, and only then renamed to the name
claims look for: created under its final name, another process's claim could lock it in the
moment before its writer did, find it empty and remove it, and every event then written to it
would be lost. The writer reads its segment back through its own descriptor, never by name.
Segment names carry a digest of the store they belong to, so servers of different stores may
share a directory without moving each other's events.

Line format: the event's JSON header `[id, recorded, outcome, [[param, value], ...]]`, a
tab, the event's content (JSON, stored as it is), a newline. orjson escapes tabs and
newlines inside strings, so neither can occur inside the two parts. A last line without its
newline was cut short by a crash while it was being written: its request got no answer, and
it is skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson

log = logging.getLogger(__name__)

#: (event id, recorded micros, outcome, content (JSON), [(param, value), ...])
Event = tuple[str, int, str, bytes, list]
SUFFIX = ".spool"
#: suffix of a segment not yet locked and renamed to its name (`Segment`)
UNPUBLISHED = ".new"
#: seconds after which an unpublished segment is taken for the leftover of a writer that died
#: between creating and renaming it (that takes microseconds); it holds no event
UNPUBLISHED_STALE = 60.0


def store_digest(store_url: str) -> str:
    """Names a store in segment names without spelling out its address."""
    return hashlib.sha256(store_url.encode()).hexdigest()[:12]


def encode(event_id: str, recorded: int, outcome: str, content: bytes, index: list) -> bytes:
    return orjson.dumps([event_id, recorded, outcome, index]) + b"\t" + content + b"\n"


def decode(data: bytes) -> tuple[list[Event], int]:
    """The complete events in a segment's bytes, and how many bytes of a cut-off line follow them."""
    events = []
    end = data.rfind(b"\n") + 1
    for line in data[:end].split(b"\n")[:-1]:
        header, _, content = line.partition(b"\t")
        event_id, recorded, outcome, index = orjson.loads(header)
        events.append((event_id, recorded, outcome, content, [tuple(pair) for pair in index]))
    return events, len(data) - end


class Segment:
    """One open, locked segment file this process appends to.

    Created as `.<name>.new`, locked, then renamed to `<name>`: the lock is held before any
    other process can see the segment (see the module docstring).
    """

    def __init__(self, path: Path):
        self.path = path
        hidden = path.with_name(f".{path.name}{UNPUBLISHED}")
        self.fd = os.open(hidden, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            os.rename(hidden, path)
        except BaseException:
            os.close(self.fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(hidden)
            raise
        self.size = 0

    def append(self, line: bytes) -> None:
        written = os.write(self.fd, line)
        self.size += written
        if written != len(line):  # a short write to a regular file: the disk is full
            raise OSError(f"audit spool: wrote {written} of {len(line)} bytes")

    def read(self) -> bytes:
        """What this process wrote, read through its own descriptor (whatever the name holds now)."""
        chunks: list[bytes] = []
        offset = 0
        while True:
            chunk = os.pread(self.fd, 1 << 20, offset)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            offset += len(chunk)

    def remove(self) -> None:
        os.unlink(self.path)
        os.close(self.fd)  # releases the lock only once the name is gone

    def close(self) -> None:
        os.close(self.fd)


class AuditSpool:
    """Append events to this process's segment; move finished segments into the store."""

    def __init__(self, directory: Path, store_url: str, store: Callable[[list[Event], bool], None]):
        self.directory = Path(directory)
        self.prefix = store_digest(store_url) + "-"
        self._store = store  # (events, may_exist) -> None, in one transaction
        self._lock = threading.Lock()  # guards _current against the drain
        self._drain_lock = threading.Lock()  # one drain at a time in this process
        self._current: Segment | None = None
        self._pid: int | None = None
        self._full: list[Segment] = []  # rotated out, not yet stored

    def _new_segment(self) -> Segment:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return Segment(self.directory / f"{self.prefix}{os.getpid()}-{uuid.uuid4().hex}{SUFFIX}")

    def append(self, event_id: str, recorded: int, outcome: str, content: bytes, index: list) -> None:
        line = encode(event_id, recorded, outcome, content, index)
        with self._lock:
            if self._pid != os.getpid():  # first event, or a forked child: never share a parent's file
                self._current, self._full, self._pid = None, [], os.getpid()
            if self._current is None:
                self._current = self._new_segment()
            self._current.append(line)

    def pending(self) -> bool:
        current = self._current
        return bool(self._full) or (current is not None and current.size > 0 and self._pid == os.getpid())

    def backlog(self) -> tuple[int, int | None]:
        """Segments of this store waiting in the directory (any process's), and when the oldest
        event among them was recorded (epoch micros; None when none holds an event yet)."""
        segments, oldest = 0, None
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return 0, None
        for name in names:
            if not (name.startswith(self.prefix) and name.endswith(SUFFIX)):
                continue
            try:
                with open(self.directory / name, "rb") as file:
                    header = file.readline(4096).partition(b"\t")[0]
            except FileNotFoundError:  # stored and removed meanwhile
                continue
            segments += 1
            try:
                recorded = orjson.loads(header)[1]
            except (orjson.JSONDecodeError, IndexError, TypeError):  # empty, or its first line cut short
                continue
            oldest = recorded if oldest is None else min(oldest, recorded)
        return segments, oldest

    def drain(self) -> int:
        """Store this process's events so far and any segment a dead process left; how many events
        were drained (those a crashed drain had stored already count too, but are not stored again)."""
        with self._drain_lock:
            with self._lock:
                if self._current is not None and self._current.size and self._pid == os.getpid():
                    self._full.append(self._current)
                    self._current = None
            stored = 0
            while self._full:
                segment = self._full[0]
                stored += self._store_segment(segment.read(), may_exist=False)
                segment.remove()
                self._full.pop(0)
            return stored + self._claim_orphans()

    def _store_segment(self, data: bytes, may_exist: bool) -> int:
        events, cut = decode(data)
        if cut:
            log.warning(
                "audit spool: skipped %d bytes of an event cut short by a crash (its request was not answered)", cut
            )
        if events:
            self._store(events, may_exist)
        return len(events)

    def _claim_orphans(self) -> int:
        """Segments of this store that no live process holds: their writer died."""
        stored = 0
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return 0
        own = {s.path.name for s in self._full} | ({self._current.path.name} if self._current else set())
        for name in names:
            if name.startswith("." + self.prefix) and name.endswith(UNPUBLISHED):
                self._clear_unpublished(self.directory / name)
                continue
            if not (name.startswith(self.prefix) and name.endswith(SUFFIX)) or name in own:
                continue
            path = self.directory / name
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # another process claimed it first
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # its writer is alive
                    continue
                try:
                    if os.stat(path).st_ino != os.fstat(fd).st_ino:
                        continue
                except FileNotFoundError:  # stored and removed by whoever held it before us
                    continue
                with open(fd, "rb", closefd=False) as file:
                    data = file.read()
                stored += self._store_segment(data, may_exist=True)
                os.unlink(path)
            finally:
                os.close(fd)
        return stored

    @staticmethod
    def _clear_unpublished(path: Path) -> None:
        """Remove a segment its writer never renamed, once it is old and nobody holds it: the
        writer died between creating and locking it, before it held an event."""
        try:
            if time.time() - os.stat(path).st_mtime < UNPUBLISHED_STALE:
                return
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_size == 0:
                os.unlink(path)
        except (BlockingIOError, FileNotFoundError):
            pass
        finally:
            os.close(fd)

    def close(self) -> None:
        """Store what is spooled (at exit); a failure leaves the segment for the next process."""
        try:
            self.drain()
        except Exception as err:  # noqa: BLE001 - kept on disk; claimed later
            log.error("audit spool: events left on disk for the next server to store: %s", type(err).__name__)
        with self._lock:
            if self._pid == os.getpid():  # a forked child's segments are its parent's to close
                for segment in [*self._full, *([self._current] if self._current else [])]:
                    segment.close()
            self._current, self._full = None, []
