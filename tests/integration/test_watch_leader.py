"""Several watchers on one PostgreSQL store poll each source from one process at a time, and
another takes over when that one dies; a watcher finds an archive that came back within seconds.

Real peers throughout: `imaging-facade sync --watch` processes, a real PostgreSQL store, a real
Orthanc with its change feed. Each watcher reaches Orthanc through a proxy of its own
(testbed/proxy.py, forwarding unchanged), so the test sees which process asks the archive and
when; the Endpoints name Orthanc itself (`wado_url`), so every watcher stores the same resources.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, select, text

from app.store.leases import holders
from app.store.repository import Store
from app.store.tables import Resource
from app.sync import sync_source
from testbed.orthanc import OrthancServer
from testbed.postgres import PrivatePostgres
from testbed.proxy import Proxy
from tests.support.keys import SHARED_IDENTITY
from tests.support.netns import Host
from tests.support.stores import reset_postgres

pytestmark = [pytest.mark.orthanc, pytest.mark.server, pytest.mark.postgres]
CLI = str(Path(sys.executable).parent / "imaging-facade")
FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "waveform_ecg.dcm", "JPEG2000.dcm"]
#: what the issue allows for another watcher to take over a dead one's source
TAKEOVER_LIMIT = 30.0


class RecordingProxy(Proxy):
    """The proxy of one watcher: when each of its requests arrived."""

    def __init__(self, target: str, label: str, host: str = "127.0.0.1"):
        super().__init__(target, host=host)
        self.label = label
        self.arrivals: list[float] = []

    def _handle(self, handler) -> None:
        self.arrivals.append(time.monotonic())
        super()._handle(handler)


def _new_study(folder: Path, name: str) -> tuple[str, str]:
    """A copy of a real file as a new study dated today: (path, StudyInstanceUID)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDate = dt.date.today().strftime("%Y%m%d")
    path = folder / name
    ds.save_as(path)
    return str(path), str(ds.StudyInstanceUID)


def _wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


def _stored(engine, uid: str) -> bool:
    with engine.connect() as conn:
        query = text("SELECT 1 FROM resource WHERE rtype = 'ImagingStudy' AND id = :id")
        return conn.execute(query, {"id": uid}).first() is not None


def _study_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM resource WHERE rtype = 'ImagingStudy'")).scalar_one()


def contents(store: Store) -> dict:
    """(type, id) -> the resource without meta: what a clean sync must also produce."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(Resource.rtype, Resource.id, Resource.content)).all()
    return {(r.rtype, r.id): {k: v for k, v in orjson.loads(r.content).items() if k != "meta"} for r in rows}


def _config(folder: Path, store_url: str, url: str, wado_url: str, **source) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    entry = {"name": "pacs", "type": "dicomweb", "url": url, "wado_url": wado_url, "timezone": "UTC", **source}
    # the stores of separate runs are compared row for row: one Patient id key
    data = {"store": store_url, "security": {"open": True}, "identity": SHARED_IDENTITY, "sources": [entry]}
    path.write_text(yaml.safe_dump(data))
    return path


class Watcher:
    """One `imaging-facade sync --watch` process; its output is kept in a file."""

    def __init__(self, config: Path, label: str, host: Host | None = None):
        self.label = label
        self.out_path = config.parent / f"{label}.log"
        self._out = open(self.out_path, "wb")
        argv = [CLI, "sync", "--watch", "--config", str(config)]
        self.proc = subprocess.Popen(
            host.run(argv) if host else argv,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )

    @property
    def holder_name(self) -> str:
        return f" {self.proc.pid}"

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._out.close()
        return self.out_path.read_text(errors="replace")


def _holder(engine, watchers: list[Watcher]) -> Watcher | None:
    """The watcher whose lock session holds source `pacs` (its application_name ends with its pid)."""
    name = holders(engine, ["pacs"])["pacs"]
    return next((w for w in watchers if name and name.endswith(w.holder_name)), None)


def _blocks(proxies: list[RecordingProxy], until: float = float("inf")) -> list[str]:
    """Which watcher asked the archive, in order, each run of requests from one watcher once:
    ["a", "b"] means a polled, then b, never interleaved."""
    arrivals = sorted((t, p.label) for p in proxies for t in p.arrivals if t < until)
    out: list[str] = []
    for _, label in arrivals:
        if not out or out[-1] != label:
            out.append(label)
    return out


@pytest.fixture(scope="module")
def pacs():
    """A real Orthanc whose change feed marks a study stable one second after its last instance."""
    with OrthancServer(extra_config={"StableAge": 1}) as server:
        server.upload([get_testdata_file(name) for name in FILES])
        yield server


@pytest.fixture
def pg_store(postgres_url):
    reset_postgres(postgres_url)
    Store(postgres_url).close()  # the schema, made once before the watchers start
    engine = create_engine(postgres_url)
    yield postgres_url, engine
    engine.dispose()


def _clean_contents(tmp_path: Path, pacs) -> dict:
    """What one clean sync of the archive stores (SQLite, straight from Orthanc)."""
    from app.config import load_config

    config = load_config(_config(tmp_path / "clean", "sqlite:///clean.db", pacs.dicomweb_url, pacs.dicomweb_url))
    store = Store.from_config(config)
    summary = sync_source(store, config.sources[0])
    assert summary.error is None and summary.failed == 0
    expected = contents(store)
    store.close()
    return expected


@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_one_watcher_polls_and_another_takes_over(tmp_path, pacs, pg_store, fault):
    """Three watchers on one store: one polls; killed (SIGKILL) or frozen (SIGSTOP, its
    database session silent, as a host cut off), another takes the source over within 30 s,
    and no two ever ask the archive at once. The store ends as one clean sync leaves it."""
    store_url, engine = pg_store
    labels = ["a", "b", "c"]
    proxies = {label: RecordingProxy(pacs.url, label) for label in labels}
    watchers: list[Watcher] = []
    try:
        for proxy in proxies.values():
            proxy.__enter__()
        for label in labels:
            config = _config(
                tmp_path / label,
                store_url,
                proxies[label].url + "/dicom-web",
                pacs.dicomweb_url,
                changes="orthanc",
                poll_interval=0.5,
            )
            watchers.append(Watcher(config, label))
        leader = _wait_for(lambda: _holder(engine, watchers), 30, "a watcher holding the source")
        _wait_for(lambda: _study_count(engine) >= len(FILES), 60, "the first full sync")
        first, uid = _new_study(tmp_path, "first.dcm")
        pacs.upload([first])
        _wait_for(lambda: _stored(engine, uid), 20, "a new study found by the leader")
        # only the leader asks the archive; the others wait
        assert _blocks(list(proxies.values())) == [leader.label]
        assert all(not proxies[w.label].arrivals for w in watchers if w is not leader)

        lost_at = time.monotonic()
        leader.proc.send_signal(signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
        second, uid2 = _new_study(tmp_path, "second.dcm")
        pacs.upload([second])
        others = [w for w in watchers if w is not leader]
        successor = _wait_for(lambda: _holder(engine, others), TAKEOVER_LIMIT, "another watcher taking over")
        _wait_for(lambda: _stored(engine, uid2), TAKEOVER_LIMIT - (time.monotonic() - lost_at), "the successor polling")
        took = time.monotonic() - lost_at
        assert took < TAKEOVER_LIMIT
        sys.stderr.write(f"\n{fault} leader: source taken over and new study stored {took:.1f}s later\n")

        woke = time.monotonic()
        # nothing was polled by two at once: the leader, then the successor
        assert _blocks(list(proxies.values()), until=woke) == [leader.label, successor.label]
        if fault == "frozen":  # the old leader wakes up: it has lost the source and stops polling
            leader.proc.send_signal(signal.SIGCONT)
            third, uid3 = _new_study(tmp_path, "third.dcm")
            pacs.upload([third])
            _wait_for(lambda: _stored(engine, uid3), 20, "a study after the old leader woke up")
            time.sleep(3)  # a few of its rounds: it asks for the lock, not the archive
            # frozen in the middle of a poll, it may end the study in hand (docs/sync.md), no more
            assert not any(t >= woke + 2.0 for t in proxies[leader.label].arrivals)
            assert _holder(engine, watchers) is successor
    finally:
        outputs = {w.label: w.stop() for w in watchers}
        for proxy in proxies.values():
            proxy.__exit__(None, None, None)
    for w in watchers:
        if w is not leader or fault == "frozen":
            assert w.proc.returncode == 0, outputs[w.label]
        assert "Traceback" not in outputs[w.label]
    assert "this process polls source pacs now" in outputs[successor.label]
    from app.config import load_config

    config = load_config(_config(tmp_path / "final", store_url, pacs.dicomweb_url, pacs.dicomweb_url))
    store = Store.from_config(config)
    again = sync_source(store, config.sources[0])
    assert again.error is None and again.new == again.updated == again.deleted == 0
    assert contents(store) == _clean_contents(tmp_path, pacs)
    store.close()


def test_watcher_catches_up_within_5s_of_the_archive_answering_again(tmp_path, sqlite_url):
    """Orthanc stopped long enough for a growing back-off to reach tens of seconds, then
    started again and given a new study: the watcher stores it within 5 s of Orthanc answering."""
    with OrthancServer() as archive:
        archive.upload([get_testdata_file("CT_small.dcm")])
        config = _config(tmp_path, sqlite_url, archive.dicomweb_url, archive.dicomweb_url, poll_interval=1, timeout=1)
        watcher = Watcher(config, "only")
        store = Store(sqlite_url)
        try:
            _wait_for(lambda: _study_count(store.engine) == 1, 30, "the first full sync")
            archive.halt()
            time.sleep(25)  # polls fail all along: doubling pauses from 1 s would reach 16-32 s
            archive.resume()  # returns once Orthanc answers
            answering = time.monotonic()
            path, uid = _new_study(tmp_path, "new.dcm")  # dated today: the next date-window poll sees it
            archive.upload([path])
            _wait_for(lambda: _stored(store.engine, uid), 30, "the new study")
            lag = time.monotonic() - answering
        finally:
            out = watcher.stop()
            store.close()
    sys.stderr.write(f"\nnew study stored {lag:.1f}s after the archive answered again\n")
    assert lag < 5.0, out
    assert "poll failed" in out and watcher.proc.returncode == 0


def _free_subnet() -> str:
    """10.213.N, a /24 no interface of this machine is in."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    return next(f"10.213.{n}" for n in range(100, 250) if f" 10.213.{n}." not in used)


@pytest.mark.netns
def test_a_watcher_cut_off_from_the_network_is_taken_over(tmp_path, pacs):
    """The leader runs on a second host (a network namespace) whose link goes down: the server
    ends its silent session, the watcher left takes the source over within 30 s; when the link
    comes back the old leader finds the source taken and stays a stand-by. Needs root (iproute2)."""
    assert os.geteuid() == 0, "network namespaces need root: run the integration tests as root"
    with Host(_free_subnet()) as host, PrivatePostgres(host.outer) as pg:
        Store(pg.url).close()
        engine = create_engine(pg.url)
        proxies = {"cut": RecordingProxy(pacs.url, "cut", host=host.outer), "kept": RecordingProxy(pacs.url, "kept")}
        watchers: list[Watcher] = []
        try:
            for label, proxy in proxies.items():
                proxy.__enter__()
                config = _config(
                    tmp_path / label,
                    pg.url,
                    proxy.url + "/dicom-web",
                    pacs.dicomweb_url,
                    changes="orthanc",
                    poll_interval=0.5,
                    timeout=2,
                )
                watchers.append(Watcher(config, label, host if label == "cut" else None))
                if label == "cut":  # the second host leads
                    assert _wait_for(lambda: _holder(engine, watchers), 30, "the leader") is watchers[0]
                    _wait_for(lambda: _study_count(engine) >= len(FILES), 60, "the first full sync")
            cut, kept = watchers
            time.sleep(2)
            assert _holder(engine, watchers) is cut and not proxies["kept"].arrivals

            host.cut()
            lost_at = time.monotonic()
            path, uid = _new_study(tmp_path, "after-cut.dcm")
            pacs.upload([path])
            _wait_for(lambda: _holder(engine, [kept]), TAKEOVER_LIMIT, "the watcher left taking over")
            _wait_for(lambda: _stored(engine, uid), TAKEOVER_LIMIT - (time.monotonic() - lost_at), "its poll")
            took = time.monotonic() - lost_at
            assert took < TAKEOVER_LIMIT
            sys.stderr.write(f"\nleader cut off: source taken over and new study stored {took:.1f}s later\n")

            time.sleep(max(0.0, 15 - took))  # the cut host's requests of before the cut have timed out
            host.restore()
            restored = time.monotonic()
            path, uid = _new_study(tmp_path, "after-restore.dcm")
            pacs.upload([path])
            _wait_for(lambda: _stored(engine, uid), 20, "a study after the link came back")
            time.sleep(8)  # the old leader reconnects and asks for the lock: it stays a stand-by
            assert _holder(engine, watchers) is kept
            # as for a frozen leader: a poll it had in hand when cut off may finish its study once the
            # link is back (its requests of then arrive, retransmitted), and nothing after that
            assert not any(t >= restored + 2.0 for t in proxies["cut"].arrivals)
            assert _blocks(list(proxies.values()), until=restored) == ["cut", "kept"]
        finally:
            outputs = {w.label: w.stop() for w in watchers}
            for proxy in proxies.values():
                proxy.__exit__(None, None, None)
            engine.dispose()
    assert "this process polls source pacs now" in outputs["kept"]
    assert "no longer held by this process" in outputs["cut"] or "lost the database session" in outputs["cut"]
    assert all("Traceback" not in out for out in outputs.values()), outputs
