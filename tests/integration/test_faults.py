"""Faults during a sync lose and duplicate nothing: after recovery and one more sync, the store
holds exactly what one clean full sync (reading one study at a time) produces, whether the
faulty run read one study at a time or several at once (`concurrency`).

Real Orthanc instances are stopped mid-sync, the sync process is killed mid-study, and (through
the fault proxy in tests/support/faults.py, the one stand-in here) the archive answers 500, hangs past the
timeout, or drops a connection half-way through an answer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import yaml
from sqlalchemy import select

from app.sources.errors import ARCHIVE_DOWN_AFTER
from app.store.repository import Store
from app.store.tables import Resource
from app.sync import sync_source
from testbed.orthanc import OrthancServer, readable_testdata_files
from tests.support.faults import FaultProxy
from tests.support.keys import SHARED_IDENTITY

pytestmark = [pytest.mark.orthanc, pytest.mark.server]
CLI = str(Path(sys.executable).parent / "imaging-facade")


def contents(store: Store) -> dict:
    """(type, id) -> the resource without meta (and without the archive's address, which is
    another port for each Orthanc, nor the narrative, which names it): what a clean sync must
    also produce."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(Resource.rtype, Resource.id, Resource.content)).all()
    return {
        (r.rtype, r.id): {k: v for k, v in orjson.loads(r.content).items() if k not in ("meta", "address", "text")}
        for r in rows
    }


@pytest.fixture(scope="module")
def archive():
    """A real Orthanc holding pydicom's readable test files (several dozen studies)."""
    with OrthancServer() as server:
        server.upload(readable_testdata_files())
        yield server


@pytest.fixture(scope="module")
def clean(archive, tmp_path_factory, write_config_module):
    """What one clean full sync of the archive stores."""
    config = write_config_module(tmp_path_factory.mktemp("clean"), archive.dicomweb_url, concurrency=1)
    store = Store.from_config(config)
    summary = sync_source(store, config.sources[0])
    assert summary.error is None and summary.new > 10
    expected = contents(store)
    store.close()
    return expected


@pytest.fixture(scope="module")
def write_config_module():
    from app.config import load_config

    def write(folder: Path, url: str, **source) -> object:
        path = folder / "config.yaml"
        path.write_text(
            yaml.safe_dump(
                {
                    "store": "sqlite:///facade.db",
                    "security": {"open": True},
                    "identity": SHARED_IDENTITY,  # the stores of separate runs are compared row for row
                    "sources": [{"name": "pacs", "type": "dicomweb", "url": url, "timezone": "UTC", **source}],
                }
            )
        )
        return load_config(path)

    return write


def _recover_and_compare(config, clean_contents) -> None:
    store = Store.from_config(config)
    again = sync_source(store, config.sources[0])
    assert again.error is None and again.failed == 0
    assert contents(store) == clean_contents  # nothing lost, nothing duplicated
    assert store.quarantine.entries() == []
    store.close()


def _studies_stored(store: Store) -> int:
    with store.engine.connect() as conn:
        return conn.exec_driver_sql("SELECT COUNT(*) FROM resource WHERE rtype = 'ImagingStudy'").scalar()


@pytest.mark.parametrize("concurrency", [1, 4])
def test_archive_stopped_mid_sync(tmp_path, write_config_module, clean, concurrency):
    with OrthancServer() as pacs:
        pacs.upload(readable_testdata_files())
        config = write_config_module(tmp_path, pacs.dicomweb_url, timeout=2, concurrency=concurrency)
        store = Store.from_config(config)

        def stop_after_five(summary, _total):
            if summary.done == 5:
                pacs.halt()

        summary = sync_source(store, config.sources[0], progress=stop_after_five)
        # the run ends with a clear error, the same however many studies it read at once...
        assert summary.error and summary.error.startswith(f"source 'pacs' ({pacs.dicomweb_url}): cannot read studies: ")
        assert summary.failed == 0  # ...instead of quarantining the rest
        if concurrency == 1:
            assert summary.done == 5
        else:  # studies already read when the archive stopped are stored too
            assert summary.done >= 5
        assert _studies_stored(store) == summary.new == summary.done  # what was read is kept
        assert store.quarantine.entries() == []
        assert [t for t in threading.enumerate() if t.name.startswith("source-")] == []
        store.close()
        pacs.resume()
        _recover_and_compare(config, clean)


def test_sync_process_killed_mid_study(tmp_path, archive, write_config_module, clean):
    config = write_config_module(tmp_path, archive.dicomweb_url)
    proc = subprocess.Popen(
        [CLI, "sync", "--config", str(config.path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    store = Store.from_config(config)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            with store.engine.connect() as conn:
                stored = conn.exec_driver_sql("SELECT COUNT(*) FROM resource WHERE rtype = 'ImagingStudy'").scalar()
            if stored >= 3:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert 3 <= stored < len([k for k in clean if k[0] == "ImagingStudy"]), "killed before the end"
    store.close()
    _recover_and_compare(config, clean)


@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize("fault", ["500", "hang", "drop", "transient"])
def test_archive_errors(tmp_path, archive, write_config_module, clean, fault, concurrency):
    with FaultProxy(archive.url) as proxy:
        config = write_config_module(tmp_path, proxy.url + "/dicom-web", timeout=1, concurrency=concurrency)
        store = Store.from_config(config)
        proxy.only = "/series"  # the listing works; the archive fails while studies are read
        if fault == "500":
            proxy.fail(1000, 500)
        elif fault == "hang":
            proxy.hang(3)
        elif fault == "drop":
            proxy.drop(1000)
        else:
            proxy.fail(2, 503)  # a busy archive: retried with backoff, then the sync goes on
        summary = sync_source(store, config.sources[0])
        if fault == "transient":
            assert summary.error is None and summary.source_stats["retries"] >= 2
        else:
            assert summary.error and summary.new == 0, summary
            assert {"500": "HTTP 500", "hang": "timed out", "drop": "pacs"}[fault] in summary.error
            assert summary.source_stats["retries"] >= 1  # tried again before giving up
        # a 5xx study fails alone until several in a row show the archive is failing, not the study
        # (counted in listing order, also when several are read at once)
        assert len(store.quarantine.entries()) == (ARCHIVE_DOWN_AFTER - 1 if fault == "500" else 0)
        store.close()
        proxy.clear()
        _recover_and_compare(config, clean)
