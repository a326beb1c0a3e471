"""Bulk Data export on the workers of a distributed sync (`queue:` configured), against real
peers: RabbitMQ (the machine's broker, a queue of this test's own), PostgreSQL, and
`imaging-facade worker` processes of their own (testbed/workers.py).

An export the API hands to a worker writes what the API node writes itself without a queue;
a worker killed mid-job has its task redelivered, and the job ends once, complete, with no file
of the dead run left; a broker that cannot be reached makes the kick-off a 503, not a lost job.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from app.store import export_jobs
from app.store.export_jobs import DONE
from app.store.repository import Store
from app.web import create_app
from testbed.rabbitmq import delete_queue, queue_name
from testbed.workers import WorkerProcess
from tests.support.access import _patient, _study, load
from tests.support.bulk import ASYNC, download, kickoff, stored, wait, worker
from tests.support.stores import postgres_database

pytestmark = [pytest.mark.server]


@pytest.fixture
def queue(broker):
    """A queue of this test's own on the shared broker, removed afterwards."""
    name = queue_name()
    yield name
    delete_queue(name, broker)


@pytest.fixture
def own_postgres(postgres_url):
    """A PostgreSQL database of this test's own: an export thread that an earlier test of this
    process left running (it ends when its app is collected) polls the session's database, and
    would take the job this test queues for the worker. (It asks for `postgres_url`, whose use
    marks a test as needing PostgreSQL, tests/conftest.py.)"""
    with postgres_database() as url:
        yield url


def _data(store_url: str, exports: Path, tmp_path: Path, **export) -> dict:
    for name in ("pacs", "other"):
        (tmp_path / name).mkdir(exist_ok=True)
    return {
        "store": store_url,
        "server": {"base_url": "http://testserver/fhir"},
        "security": {"open": True},
        "sources": [{"name": n, "type": "folder", "path": str(tmp_path / n)} for n in ("pacs", "other")],
        "export": {"poll_interval": 0.05, "directory": str(exports), "page_size": 2, **export},
    }


def _fill(store: Store, extra_studies: int = 0) -> None:
    """The people of tests/support/access.py, one patient held by `other` only, and as many
    more studies (each with its patient) as asked."""
    load(store)
    store.studies.put(_study("9.1", "zed", "CT", ("pacs",)), _patient("zed", "999", "Zimmer"), "other")
    for n in range(extra_studies):
        store.studies.put(_study(f"8.{n}", f"p{n}", "MR"), _patient(f"p{n}", f"8{n}", f"Family{n}"), "pacs")


def _job(location: str) -> str:
    return location.rsplit("/", 1)[1]


def _ran_in(store: Store, job_id: str) -> int:
    """The process id of the node that ran the job (its claim: `host:pid:…`)."""
    job = export_jobs.get(store.engine, job_id)
    assert job is not None and job.node is not None
    return int(job.node.split(":")[1])


def _files(manifest: dict) -> list[tuple[str, int]]:
    return [(item["type"], item["count"]) for item in manifest["output"]]


def test_a_worker_runs_the_export_and_writes_what_the_api_node_writes(
    own_postgres, broker, queue, tmp_path, write_config
):
    local = write_config(_data(own_postgres, tmp_path / "local", tmp_path), name="local.yaml")
    queued_data = _data(own_postgres, tmp_path / "shared", tmp_path)
    queued = write_config({**queued_data, "queue": {"broker": broker, "name": queue}}, name="queued.yaml")
    store = Store.from_config(local)
    try:
        _fill(store)
        # the same export run by the API node itself (no queue)
        node = create_app(local, store)
        client = node.test_client()
        done = wait(client, kickoff(client, "/fhir/$export"))
        worker(node).stop()
        assert done.status_code == 200
        expected_manifest = done.get_json()
        expected = download(client, expected_manifest)

        api = create_app(queued, store)
        assert worker(api).runs_jobs is False
        client = api.test_client()
        location = kickoff(client, "/fhir/$export")
        time.sleep(1.0)  # no worker yet: the API node does not run the job itself
        job = export_jobs.get(store.engine, _job(location))
        assert job is not None and job.status == "queued"
        assert client.get(location[len("http://testserver") :]).headers["X-Progress"] == "queued"
        with WorkerProcess(queued.path, tmp_path / "worker.log") as process:
            process.wait_ready()
            done = wait(client, location)
            assert done.status_code == 200, done.get_data(as_text=True)
            manifest = done.get_json()
            files = download(client, manifest)
            assert _ran_in(store, _job(location)) == process.process.pid  # the worker ran it
            assert "imaging_facade.export" in process.text()
        worker(api).stop()
    finally:
        store.close()
    assert _files(manifest) == _files(expected_manifest)
    assert manifest["error"] == expected_manifest["error"] == []
    assert files == expected  # the same resources, in the same files, in the same order
    assert sorted(r["id"] for r in files["Patient"]) == sorted(stored(store, "Patient"))
    # written into the shared export folder the API node serves it from
    assert len(list((tmp_path / "shared" / _job(location)).iterdir())) == 1


def test_a_worker_killed_mid_job_has_its_job_finished_once_by_another(
    own_postgres, broker, queue, tmp_path, write_config
):
    # pages of one resource and the shortest lease: the job takes seconds, a dead claim two
    data = _data(own_postgres, tmp_path / "shared", tmp_path, page_size=1, lease=2)
    config = write_config({**data, "queue": {"broker": broker, "name": queue}})
    store = Store.from_config(config)
    try:
        _fill(store, extra_studies=150)
        api = create_app(config, store)
        client = api.test_client()
        with WorkerProcess(config.path, tmp_path / "killed.log") as killed:
            killed.wait_ready()
            location = kickoff(client, "/fhir/$export")
            job_id = _job(location)
            deadline = time.monotonic() + 60
            while True:  # kill it once it has written part of the export, not all
                job = export_jobs.get(store.engine, job_id)
                assert job is not None and job.status != DONE, "the job ended before the worker was killed"
                if job.progress and int(job.progress.split(" ")[0]) >= 40:
                    break
                assert time.monotonic() < deadline, killed.text()
                time.sleep(0.01)
            killed.kill()  # mid-job: its task's message is not acknowledged
            dead_runs = list((tmp_path / "shared" / job_id).iterdir())
            assert len(dead_runs) == 1 and any(dead_runs[0].iterdir())  # it had written files
            assert _ran_in(store, job_id) == killed.process.pid
        with WorkerProcess(config.path, tmp_path / "other.log") as other:
            other.wait_ready()
            done = wait(client, location, timeout=120)
            assert done.status_code == 200, done.get_data(as_text=True)
            manifest = done.get_json()
            files = download(client, manifest)
            assert _ran_in(store, job_id) == other.process.pid  # the redelivered task ran it
        worker(api).stop()
        for rtype in ("ImagingStudy", "Patient", "Endpoint"):
            exported = [r["id"] for r in files[rtype]]
            assert len(exported) == len(set(exported)), rtype  # none twice
            assert {r["id"]: r for r in files[rtype]} == stored(store, rtype), rtype  # none missing
        runs = list((tmp_path / "shared" / job_id).iterdir())
        assert runs != dead_runs and len(runs) == 1  # the dead run's partial files are gone
        assert orjson.loads(export_jobs.get(store.engine, job_id).manifest)["run"] == runs[0].name
    finally:
        store.close()


def test_a_broker_that_cannot_be_reached_makes_the_kickoff_a_503_and_keeps_no_job(own_postgres, tmp_path, write_config):
    data = _data(own_postgres, tmp_path / "shared", tmp_path)
    # a port nothing listens on (the broker is down)
    config = write_config({**data, "queue": {"broker": "amqp://guest:guest@127.0.0.1:9//", "name": "nowhere"}})
    store = Store.from_config(config)
    try:
        _fill(store)
        api = create_app(config, store)
        response = api.test_client().get("/fhir/$export", headers=ASYNC)
        worker(api).stop()
        assert response.status_code == 503
        assert response.headers["Retry-After"].isdigit()
        body = response.get_json()
        assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "transient"
        assert "broker" in body["issue"][0]["diagnostics"]
        assert not export_jobs.any_jobs(store.engine)  # nothing left queued that no task names
    finally:
        store.close()
