"""The audit spool: every event reaches the store once, also when its process died first.

Real files, real `flock` locks and real child processes; the store is a list here (the
tables are tested in tests/security/test_audit.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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
    spool.append(event_id, 1_700_000_000_000_000, "0", b'{"resourceType":"AuditEvent","id":"%s"}' % event_id.encode(),
                 [("patient", patient), ("agent", "client-1")])


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
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
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


def test_a_dead_process_segment_is_claimed_once(tmp_path):
    directory = tmp_path / "spool"
    child = _child(directory, ["dead-1", "dead-2"], "die")
    assert child.wait(timeout=30) == 9
    assert len(list(directory.iterdir())) == 1
    spool, stored = _spool(directory)
    assert spool.drain() == 2
    assert stored.ids == ["dead-1", "dead-2"]
    assert stored.calls == [True]  # it may have been stored before its writer died: the store checks
    assert spool.drain() == 0 and list(directory.iterdir()) == []


def test_a_live_process_segment_is_left_to_it(tmp_path):
    directory = tmp_path / "spool"
    child = _child(directory, ["live-1"], "wait")
    try:
        spool, stored = _spool(directory)
        assert spool.drain() == 0 and stored.events == []
        assert len(list(directory.iterdir())) == 1
    finally:
        child.kill()
        child.wait(timeout=30)
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


def test_another_store_segments_are_left_alone(tmp_path):
    directory = tmp_path / "spool"
    child = _child(directory, ["other-store"], "die")
    child.wait(timeout=30)
    spool, stored = _spool(directory, "postgresql+psycopg://postgres@127.0.0.1:5432/another")
    assert spool.drain() == 0 and stored.events == []
    assert len(list(directory.iterdir())) == 1


def test_the_spool_directory_is_private(tmp_path):
    spool, _ = _spool(tmp_path / "spool")
    _append(spool, "e0")
    assert (tmp_path / "spool").stat().st_mode & 0o077 == 0
    assert all(path.stat().st_mode & 0o077 == 0 for path in (tmp_path / "spool").iterdir())
