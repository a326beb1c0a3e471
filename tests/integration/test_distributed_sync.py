"""Distributed sync on Celery against real peers: RabbitMQ (the machine's broker, a queue of
this run's own), PostgreSQL, Orthanc, and `imaging-facade worker` processes of their own.

A distributed sync must store what a local sync stores and say what it says; a worker killed
mid-task has its task redelivered, and the store still ends as one clean sync leaves it: no
study lost or stored twice, the quarantine as it was.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
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
from sqlalchemy import create_engine, func, select

from app.store.tables import Quarantine, Resource, ResourceVersion, SourceState, StudyCopy, SyncRun
from testbed.orthanc import OrthancServer, readable_testdata_files
from testbed.rabbitmq import BROKER_LOCK, delete_queue, queue_name
from testbed.workers import WorkerProcess
from tests.support.damaged_corpus import CASES
from tests.support.faults import FaultProxy
from tests.support.keys import SHARED_IDENTITY
from tests.support.stores import reset_postgres

pytestmark = [pytest.mark.orthanc, pytest.mark.server]

CLI = [sys.executable, "-m", "app.cli"]
#: an archive's study that the mapping refuses (a StudyInstanceUID over 64 characters, PS3.5 9.1)
DAMAGED = next(c for c in CASES if c.name == "study_uid_over_64")
#: a few tasks per worker for the archive's 30 or so studies
STUDIES_PER_TASK = 4


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """An Orthanc holding pydicom's readable test files and one study the mapping quarantines."""
    damaged = tmp_path_factory.mktemp("damaged") / "damaged.dcm"
    damaged.write_bytes(DAMAGED.build(DAMAGED))
    with OrthancServer() as server:
        server.upload([*readable_testdata_files(), str(damaged)])
        yield server


@pytest.fixture
def queue(broker):
    """A queue of this test's own on the shared broker, removed afterwards."""
    name = queue_name()
    yield name
    delete_queue(name, broker)


def _config(
    tmp_path: Path, store_url: str, url: str, broker: str, queue: str, name: str = "config.yaml", **source
) -> Path:
    path = tmp_path / name
    path.write_text(
        yaml.safe_dump(
            {
                "store": store_url,
                "security": {"open": True},
                "identity": SHARED_IDENTITY,  # stores of separate runs are compared row for row
                "queue": {"broker": broker, "name": queue, "studies_per_task": STUDIES_PER_TASK},
                "sources": [
                    {"name": "pacs", "type": "dicomweb", "url": url, "timezone": "UTC", "concurrency": 2, **source}
                ],
            }
        )
    )
    return path


def _stored(store_url: str) -> dict:
    """What a sync stored, without what differs from run to run (meta, times, order)."""
    engine = create_engine(store_url)
    with engine.connect() as conn:
        resources = conn.execute(select(Resource.rtype, Resource.id, Resource.content)).all()
        copies = conn.execute(select(StudyCopy.study_uid, StudyCopy.archive_key, StudyCopy.content)).all()
        quarantine = conn.execute(select(Quarantine.key, Quarantine.study_uid, Quarantine.reason)).all()
    engine.dispose()
    return {
        "resources": {
            (r.rtype, r.id): {k: v for k, v in orjson.loads(r.content).items() if k != "meta"} for r in resources
        },
        "copies": {(c.study_uid, c.archive_key): orjson.loads(c.content) for c in copies},
        "quarantine": sorted(quarantine),
    }


def _recorded_summary(store_url: str) -> dict:
    """The summary the last run recorded (the same the command prints)."""
    engine = create_engine(store_url)
    with engine.connect() as conn:
        summary = conn.execute(select(SyncRun.summary).order_by(SyncRun.started.desc()).limit(1)).scalar_one()
    engine.dispose()
    return orjson.loads(summary) if isinstance(summary, str | bytes) else summary


def _damaged_quarantined(stored: dict) -> bool:
    return any(all(word in reason for word in DAMAGED.words) for _, _, reason in stored["quarantine"])


def _without_time(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "seconds"}


def _printed(output: str) -> str:
    """The command's summary lines, less the seconds it took."""
    return re.sub(r" in [0-9.]+s", "", output)


def _sync(config: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "sync", "--config", str(config), *extra], capture_output=True, text=True, timeout=timeout
    )


def test_two_workers_store_and_report_what_a_local_sync_does(archive, postgres_url, broker, queue, tmp_path):
    config = _config(tmp_path, postgres_url, archive.dicomweb_url, broker, queue)
    reset_postgres(postgres_url)
    local = _sync(config)
    assert local.returncode == 0, local.stderr
    expected, expected_summary = _stored(postgres_url), _recorded_summary(postgres_url)
    assert expected_summary["new"] >= 25 and expected_summary["failed"] >= 1
    assert _damaged_quarantined(expected)

    reset_postgres(postgres_url)
    with (
        WorkerProcess(config, tmp_path / "one.log") as one,
        WorkerProcess(config, tmp_path / "two.log") as two,
    ):
        one.wait_ready()
        two.wait_ready()
        distributed = _sync(config, "--distributed")
    assert distributed.returncode == 0, distributed.stderr
    assert _stored(postgres_url) == expected  # the same resources, copies and quarantine
    assert _without_time(_recorded_summary(postgres_url)) == _without_time(expected_summary)
    assert _printed(distributed.stdout) == _printed(local.stdout)  # the same summary, counters included
    # both workers took tasks: the studies were not all read in one process
    assert one.count("succeeded") > 0 and two.count("succeeded") > 0


def _task_ids(log: str, event: str) -> list[str]:
    return re.findall(r"Task imaging_facade\.sync_studies\[([0-9a-f-]+)\] " + event, log)


def _in_hand(worker: WorkerProcess) -> set[str]:
    text = worker.text()
    return set(_task_ids(text, "received")) - set(_task_ids(text, "succeeded"))


def _copies(store_url: str) -> int:
    engine = create_engine(store_url)
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(StudyCopy)).scalar_one()
    engine.dispose()
    return count


def _versions(store_url: str) -> dict[str, int]:
    """How many versions each ImagingStudy has: a study stored twice as a change has two."""
    engine = create_engine(store_url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(ResourceVersion.id, func.count())
            .where(ResourceVersion.rtype == "ImagingStudy")
            .group_by(ResourceVersion.id)
        ).all()
    engine.dispose()
    return dict(rows)


def test_a_worker_killed_mid_task_loses_nothing_and_stores_nothing_twice(
    archive, postgres_url, broker, queue, tmp_path
):
    with FaultProxy(archive.url) as proxy:
        config = _config(tmp_path, postgres_url, proxy.url + "/dicom-web", broker, queue)
        reset_postgres(postgres_url)
        clean = _sync(config)
        assert clean.returncode == 0, clean.stderr
        expected, expected_summary = _stored(postgres_url), _recorded_summary(postgres_url)
        assert _damaged_quarantined(expected)

        reset_postgres(postgres_url)
        proxy.delay = 0.1  # a slow network: each task takes a second or so
        with WorkerProcess(config, tmp_path / "killed.log") as killed:
            killed.wait_ready()
            run = subprocess.Popen(
                [*CLI, "sync", "--config", str(config), "--distributed"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                # kill it once the task in hand has stored part of its studies, not all
                deadline = time.monotonic() + 120
                while not (_in_hand(killed) and _copies(postgres_url) > STUDIES_PER_TASK * killed.count("succeeded")):
                    assert time.monotonic() < deadline and run.poll() is None, killed.text()
                    time.sleep(0.02)
                in_hand = _in_hand(killed)
                killed.kill()  # mid-task: its task's message is not acknowledged
                proxy.delay = 0.0
                with WorkerProcess(config, tmp_path / "other.log") as other:
                    other.wait_ready()
                    out, err = run.communicate(timeout=120)
            finally:
                if run.poll() is None:
                    run.kill()
                    run.wait()
    assert run.returncode == 0, err
    # the task the dead worker held was run again by the other one
    assert in_hand <= set(_task_ids(other.text(), "succeeded"))
    stored = _stored(postgres_url)
    assert stored == expected  # no study lost, the quarantine intact
    assert set(_versions(postgres_url).values()) == {1}  # none stored twice as a change
    summary = _recorded_summary(postgres_url)
    assert summary["failed"] == expected_summary["failed"]
    # studies the dead worker stored before it died are counted as unchanged when redone
    assert summary["new"] + summary["unchanged"] == expected_summary["new"]
    assert summary["unchanged"] > 0  # the dead worker had stored part of its task
    assert summary["error"] is None and "pacs:" in out


def _rabbitmqctl(*args: str) -> None:
    """Stop or start the machine's RabbitMQ application (the Erlang node stays up)."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    assert rabbitmqctl, "restarting the broker needs rabbitmqctl (Debian rabbitmq-server) on this machine"
    subprocess.run([rabbitmqctl, *args], check=True, capture_output=True, timeout=120)


def test_a_broker_restart_mid_sync_loses_no_task(archive, postgres_url, broker, queue, tmp_path):
    with FaultProxy(archive.url) as proxy:
        config = _config(tmp_path, postgres_url, proxy.url + "/dicom-web", broker, queue)
        reset_postgres(postgres_url)
        clean = _sync(config)
        assert clean.returncode == 0, clean.stderr
        expected, expected_summary = _stored(postgres_url), _recorded_summary(postgres_url)

        reset_postgres(postgres_url)
        proxy.delay = 0.1
        with WorkerProcess(config, tmp_path / "worker.log") as worker:
            worker.wait_ready()
            run = subprocess.Popen(
                [*CLI, "sync", "--config", str(config), "--distributed"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                deadline = time.monotonic() + 120
                while not (worker.count("succeeded") >= 1 and _in_hand(worker)):
                    assert time.monotonic() < deadline and run.poll() is None, worker.text()
                    time.sleep(0.02)
                with BROKER_LOCK.alone():  # no other test uses the broker while it is down
                    try:
                        _rabbitmqctl("stop_app")  # the tasks not done are in the broker, one in hand
                        time.sleep(2)
                    finally:
                        _rabbitmqctl("start_app")
                proxy.delay = 0.0
                out, err = run.communicate(timeout=180)
            finally:
                if run.poll() is None:
                    run.kill()
                    run.wait()
    assert run.returncode == 0, err + worker.text()
    assert "Connection to broker lost" in worker.text()  # the worker did lose the broker
    assert _stored(postgres_url) == expected
    assert set(_versions(postgres_url).values()) == {1}
    summary = _recorded_summary(postgres_url)
    assert summary["failed"] == expected_summary["failed"]
    assert summary["new"] + summary["unchanged"] == expected_summary["new"]


def _new_study(folder: Path) -> tuple[Path, str]:
    """A copy of a real file as a new study dated today (a date-window poll's): (path, StudyInstanceUID)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDate = dt.datetime.now(dt.UTC).strftime("%Y%m%d")
    path = folder / "new.dcm"
    ds.save_as(path)
    return path, str(ds.StudyInstanceUID)


def _full_sync_done(store_url: str) -> bool:
    engine = create_engine(store_url)
    with engine.connect() as conn:
        done = conn.execute(select(SourceState.last_full).where(SourceState.source == "pacs")).scalar_one_or_none()
    engine.dispose()
    return done is not None


def _holds(store_url: str, study_uid: str) -> bool:
    return ("ImagingStudy", study_uid) in _stored(store_url)["resources"]


def _wait_for(check, timeout: float, what: str, watcher: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert watcher.poll() is None, f"the watcher ended: {watcher.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.2)


def test_a_watcher_hands_its_full_sync_and_its_polls_to_the_workers(archive, postgres_url, broker, queue, tmp_path):
    """`sync --watch --distributed`: the first full sync and then a date-window poll that finds a
    new study are read and stored by the worker (its tasks), and the store ends as a clean
    local sync of the same archive leaves it."""
    config = _config(tmp_path, postgres_url, archive.dicomweb_url, broker, queue, poll_interval=0.5)
    reset_postgres(postgres_url)
    path, uid = _new_study(tmp_path)
    log = tmp_path / "watcher.log"
    added = None
    try:
        with WorkerProcess(config, tmp_path / "worker.log") as worker, log.open("w") as err:
            worker.wait_ready()
            watcher = subprocess.Popen(
                [*CLI, "sync", "--config", str(config), "--watch", "--distributed"],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
            try:
                _wait_for(lambda: _full_sync_done(postgres_url), 180, "the first full sync", watcher)
                sent = [int(n) for n in re.findall(r"sent to the workers as (\d+) tasks", log.read_text())]
                assert sent and sent[0] >= 25 // STUDIES_PER_TASK
                _wait_for(lambda: worker.count("succeeded") >= sent[0], 10, "the full sync's tasks", watcher)

                added = archive.upload([path])[0]["ParentStudy"]
                _wait_for(lambda: _holds(postgres_url, uid), 60, "the new study", watcher)
                sent = [int(n) for n in re.findall(r"sent to the workers as (\d+) tasks", log.read_text())]
                assert len(sent) >= 2 and sum(sent[1:]) >= 1  # the polls listed the window and sent it
                _wait_for(lambda: worker.count("succeeded") >= sum(sent), 10, "the polls' tasks", watcher)
            finally:
                watcher.send_signal(signal.SIGTERM)
                out, _ = watcher.communicate(timeout=60)
        assert watcher.returncode == 0, log.read_text()[-3000:]
        assert "pacs: 1 new" in out
        watched = _stored(postgres_url)

        reset_postgres(postgres_url)
        clean = _sync(config)
        assert clean.returncode == 0, clean.stderr
        assert _stored(postgres_url) == watched
    finally:
        if added is not None:  # the module's archive as the other tests know it
            archive.delete(f"/studies/{added}")
