"""The audit spool: every event reaches the store once, also when its process died first.

Real files, real `flock` locks and real child processes; the store is a list here (the
tables are tested in tests/security/test_audit.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from app.store.audit_spool import AuditSpool, encode, store_digest

ROOT = Path(__file__).resolve().parents[2]
STORE = "sqlite:///facade.db"


class Stored:
    """A store that keeps what it was given, and can be told to refuse."""

    def __init__(self):
        self.events: list = []
        self.calls: list[bool] = []
        self.refuse = False

    def __call__(self, events, may_exist):
        self.calls.append(may_exist)
        if self.refuse:
            raise ConnectionError("database down")
        self.events.extend(events)

    @property
    def ids(self) -> list[str]:
        return [e[0] for e in self.events]


def _spool(directory: Path, store_url: str = STORE) -> tuple[AuditSpool, Stored]:
    stored = Stored()
    return AuditSpool(directory, store_url, stored), stored


def _append(spool: AuditSpool, event_id: str, patient: str = "p1") -> None:
    spool.append(
        event_id,
        1_700_000_000_000_000,
        "0",
        b'{"resourceType":"AuditEvent","id":"%s"}' % event_id.encode(),
        [("patient", patient), ("agent", "client-1")],
    )


@pytest.fixture
def child():
    """Start server processes with `child(directory, ids, then)`; each is ended and its pipes closed after the test."""
    started: list[subprocess.Popen] = []

    def start(directory: Path, ids: list[str], then: str) -> subprocess.Popen:
        process = _child(directory, ids, then)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        process.stdin.close()
        process.stdout.close()


def _child(directory: Path, ids: list[str], then: str) -> subprocess.Popen:
    """A server process that spools `ids`, then `then`: 'die' (killed, no drain) or 'wait'."""
    code = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from app.store.audit_spool import AuditSpool
        spool = AuditSpool(Path({str(directory)!r}), {STORE!r}, lambda events, may_exist: None)
        for event_id in {ids!r}:
            spool.append(event_id, 1, "0", b"{{}}", [("patient", "p1")])
        print("spooled", flush=True)
        if {then!r} == "die":
            os._exit(9)
        sys.stdin.read()
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )
    assert child.stdout.readline().strip() == "spooled"
    return child


def test_drain_stores_each_event_once_in_order_and_removes_the_segment(tmp_path):
    spool, stored = _spool(tmp_path / "spool")
    for n in range(3):
        _append(spool, f"e{n}")
    assert spool.pending()
    assert spool.drain() == 3
    assert stored.ids == ["e0", "e1", "e2"]
    assert stored.events[0][4] == [("patient", "p1"), ("agent", "client-1")]
    assert stored.events[0][3] == b'{"resourceType":"AuditEvent","id":"e0"}'
    assert not spool.pending() and spool.drain() == 0
    assert list((tmp_path / "spool").iterdir()) == []
    _append(spool, "e3")  # a new segment after the drain
    assert spool.drain() == 1 and stored.ids[-1] == "e3"


def test_events_stay_spooled_while_the_store_refuses_them(tmp_path):
    spool, stored = _spool(tmp_path / "spool")
    _append(spool, "e0")
    stored.refuse = True
    with pytest.raises(ConnectionError):
        spool.drain()
    _append(spool, "e1")
    stored.refuse = False
    assert spool.drain() == 2
    assert stored.ids == ["e0", "e1"]


def test_a_dead_process_segment_is_claimed_once(tmp_path, child):
    directory = tmp_path / "spool"
    dead = child(directory, ["dead-1", "dead-2"], "die")
    assert dead.wait(timeout=30) == 9
    assert len(list(directory.iterdir())) == 1
    spool, stored = _spool(directory)
    assert spool.drain() == 2
    assert stored.ids == ["dead-1", "dead-2"]
    assert stored.calls == [True]  # it may have been stored before its writer died: the store checks
    assert spool.drain() == 0 and list(directory.iterdir()) == []


def test_a_live_process_segment_is_left_to_it(tmp_path, child):
    directory = tmp_path / "spool"
    live = child(directory, ["live-1"], "wait")
    try:
        spool, stored = _spool(directory)
        assert spool.drain() == 0 and stored.events == []
        assert len(list(directory.iterdir())) == 1
    finally:
        live.kill()
        live.wait(timeout=30)
    assert spool.drain() == 1 and stored.ids == ["live-1"]  # once it is gone


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path):
    directory = tmp_path / "spool"
    directory.mkdir()
    whole = encode("whole", 1, "0", b'{"id":"whole"}', [("patient", "p1")])
    cut = encode("cut", 2, "0", b'{"id":"cut"}', [])[:-9]
    (directory / f"{store_digest(STORE)}-123-abc.spool").write_bytes(whole + cut)
    spool, stored = _spool(directory)
    assert spool.drain() == 1
    assert stored.ids == ["whole"]
    assert list(directory.iterdir()) == []


def test_another_store_segments_are_left_alone(tmp_path, child):
    directory = tmp_path / "spool"
    dead = child(directory, ["other-store"], "die")
    dead.wait(timeout=30)
    spool, stored = _spool(directory, "postgresql+psycopg://postgres@127.0.0.1:5432/another")
    assert spool.drain() == 0 and stored.events == []
    assert len(list(directory.iterdir())) == 1


def test_the_spool_directory_is_private(tmp_path):
    spool, _ = _spool(tmp_path / "spool")
    _append(spool, "e0")
    assert (tmp_path / "spool").stat().st_mode & 0o077 == 0
    assert all(path.stat().st_mode & 0o077 == 0 for path in (tmp_path / "spool").iterdir())


#: seconds the processes below hammer one spool; raise it to soak longer (AUDIT_SPOOL_SOAK_SECONDS=600)
SOAK_SECONDS = float(os.environ.get("AUDIT_SPOOL_SOAK_SECONDS", "20"))
HAMMERING = 6

_HAMMER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from app.store.audit_spool import AuditSpool
    directory, out, seconds = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    stored = (out / f"stored-{os.getpid()}").open("ab", buffering=0)

    def store(events, may_exist):
        stored.write(b"".join(e[0].encode() + b"\\n" for e in events))

    spool = AuditSpool(directory, "sqlite:///shared.db", store)
    appended = failed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(7):  # a few events, then a drain: a new segment every few events
            spool.append(f"{os.getpid()}-{appended}", 1, "0", b"{}", [("patient", "p1")])
            appended += 1
        try:
            spool.drain()
        except Exception as exc:  # what a server's drain thread would log and retry
            failed += 1
    spool.close()
    (out / f"appended-{os.getpid()}").write_text(f"{appended} {failed}")
""")


@pytest.mark.slow
def test_many_processes_hammering_one_spool_store_every_event_once(tmp_path):
    """Six processes append and drain into one spool directory for 20 s (each drain also
    claims what looks orphaned); every event appended is stored exactly once and the spool
    ends empty. A segment created before it was locked lost events here within a second."""
    directory, out = tmp_path / "spool", tmp_path / "out"
    out.mkdir()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _HAMMER, str(directory), str(out), str(SOAK_SECONDS)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(HAMMERING)
    ]
    for child in children:
        assert child.wait(timeout=SOAK_SECONDS + 120) == 0
    appended, failed = {}, 0
    for path in out.glob("appended-*"):
        count, errors = map(int, path.read_text().split())
        appended[path.name.removeprefix("appended-")] = count
        failed += errors
    stored = Counter(line for path in out.glob("stored-*") for line in path.read_bytes().decode().split())
    expected = {f"{pid}-{n}" for pid, count in appended.items() for n in range(count)}
    assert len(appended) == HAMMERING and sum(appended.values()) > 10_000
    assert failed == 0
    assert set(stored) == expected, f"{len(expected - set(stored))} events lost"
    assert max(stored.values()) == 1, "an event was stored twice"
    assert [p.name for p in directory.iterdir()] == []
