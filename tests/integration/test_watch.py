"""Continuous sync as a user runs it (`imaging-facade sync --watch`, a real process) and the
health endpoint that reports each source's freshness."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file

from app.store.repository import Store
from app.sync import sync_source
from app.web import create_app
from testbed.orthanc import free_port

pytestmark = pytest.mark.server
CLI = str(Path(sys.executable).parent / "imaging-facade")


def _uid(name: str) -> str:
    return str(pydicom.dcmread(get_testdata_file(name)).StudyInstanceUID)


def _wait_for(check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _served(store, uid: str) -> bool:
    with store.engine.connect() as conn:
        return (
            conn.exec_driver_sql("SELECT 1 FROM resource WHERE rtype = 'ImagingStudy' AND id = ?", (uid,)).first()
            is not None
        )


def test_watch_follows_a_folder_and_stops_cleanly_on_sigterm(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copyfile(get_testdata_file("CT_small.dcm"), archive / "ct.dcm")
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": "sqlite:///facade.db",
                "sources": [{"name": "cd", "type": "folder", "path": "./archive", "poll_interval": 0.5}],
            }
        )
    )
    proc = subprocess.Popen(
        [CLI, "sync", "--watch", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    store = Store(f"sqlite:///{tmp_path / 'facade.db'}")
    try:
        _wait_for(lambda: _served(store, _uid("CT_small.dcm")))
        shutil.copyfile(get_testdata_file("MR_small.dcm"), archive / "mr.dcm")  # a new study arrives
        _wait_for(lambda: _served(store, _uid("MR_small.dcm")))
        (archive / "ct.dcm").unlink()  # and one leaves
        _wait_for(lambda: not _served(store, _uid("CT_small.dcm")))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        store.close()
    assert proc.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err
    assert "cd: 1 new" in out and "1 deleted" in out


def test_health_reports_freshness_and_failures(tmp_path, open_config, sqlite_url):
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copyfile(get_testdata_file("CT_small.dcm"), archive / "ct.dcm")
    dead = f"http://127.0.0.1:{free_port()}/dicom-web"
    config = open_config(
        sqlite_url,
        sources=[
            {"name": "cd", "type": "folder", "path": str(archive)},
            {"name": "down", "type": "dicomweb", "url": dead, "timeout": 1},
            {"name": "later", "type": "folder", "path": str(archive)},
        ],
    )
    store = Store.from_config(config)
    client = create_app(config, store).test_client()
    assert sync_source(store, config.source("cd")).error is None
    assert sync_source(store, config.source("down")).error
    time.sleep(0.2)
    body = client.get("/health").get_json()
    store.close()
    assert body["status"] == "degraded"
    by_name = {s["name"]: s for s in body["sources"]}
    assert by_name["cd"]["status"] == "ok" and by_name["cd"]["lastError"] is None
    assert 0.1 <= by_name["cd"]["lagSeconds"] < 30 and by_name["cd"]["lastFullSync"].endswith("Z")
    assert by_name["down"]["status"] == "failing" and "down" in by_name["down"]["lastError"]
    assert by_name["down"]["lastSuccess"] is None
    assert by_name["later"]["status"] == "never-synced"


def test_health_needs_no_token(tmp_path, write_config, sqlite_url):
    config = write_config({"store": sqlite_url, "security": {"open": False}, "sources": []})
    client = create_app(config).test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/fhir/ImagingStudy").status_code == 401


def test_serve_runs_the_watcher_when_configured(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": "sqlite:///facade.db",
                "server": {"base_url": f"http://127.0.0.1:{port}/fhir", "port": port, "workers": 1, "watch": True},
                "security": {"open": True},
                "sources": [{"name": "cd", "type": "folder", "path": "./archive", "poll_interval": 0.5}],
            }
        )
    )
    proc = subprocess.Popen(
        [CLI, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    import requests

    try:

        def ready():
            try:
                return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        _wait_for(ready, 30)
        shutil.copyfile(get_testdata_file("MR_small.dcm"), archive / "mr.dcm")
        uid = _uid("MR_small.dcm")
        _wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/fhir/ImagingStudy/{uid}").status_code == 200)
        health = requests.get(f"http://127.0.0.1:{port}/health").json()
        assert health["sources"][0]["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
