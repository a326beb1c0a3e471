"""The `imaging-facade` command as a user runs it: real processes, real gunicorn, real HTTP."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from pydicom.data import get_testdata_file

from testbed.orthanc import free_port

pytestmark = pytest.mark.server
CLI = str(Path(sys.executable).parent / "imaging-facade")


def run(*args, env=None, timeout=120):
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@pytest.fixture
def project(tmp_path):
    """A config and a small archive of real files, laid out as a user would."""
    archive = tmp_path / "archive"
    archive.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
        shutil.copyfile(get_testdata_file(name), archive / name)
    (archive / "readme.txt").write_text("not DICOM")
    port = free_port()
    config = {
        "store": "sqlite:///data/facade.db",
        "server": {
            "base_url": f"http://127.0.0.1:{port}/fhir",
            "host": "127.0.0.1",
            "port": port,
            "workers": 1,
            "sync_on_start": True,
        },
        "security": {"open": True},
        "sources": [{"name": "sample", "type": "folder", "path": "./archive", "timezone": "UTC"}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


def test_check_config_ok_and_default_location(project):
    path, _ = project
    result = run("check-config", env={"IMAGING_FACADE_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout and "source sample: folder" in result.stdout


def test_check_config_says_where_each_archive_is(tmp_path):
    config = tmp_path / "config.yaml"
    sources = [
        {"name": "files", "type": "folder", "path": "./archive"},
        {"name": "web", "type": "dicomweb", "url": "http://pacs:8042/dicom-web/"},
        {"name": "dimse", "type": "dimse", "host": "pacs", "port": 4242, "called_aet": "ORTHANC"},
    ]
    config.write_text(yaml.safe_dump({"store": "sqlite:///x.db", "sources": sources}))
    result = run("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"source files: folder {tmp_path / 'archive'} " in result.stdout
    assert "source web: dicomweb http://pacs:8042/dicom-web (" in result.stdout
    assert "source dimse: dimse pacs:4242 (called ORTHANC, calling FACADE) (" in result.stdout


def test_check_config_names_the_bad_key_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: sqlite:///x.db\nsources:\n  - {name: pacs, type: dicomweb}\n")
    result = run("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert "sources[0].url: a dicomweb source needs a url" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_sync_prints_progress_and_summary_and_is_idempotent(project):
    path, _ = project
    first = run("sync", "--config", str(path))
    assert first.returncode == 0, first.stderr
    assert "sample: 3 new, 0 updated, 0 unchanged, 0 failed" in first.stdout
    assert "3/3" in first.stderr  # the progress bar: studies done / total
    assert "skipped 1" in first.stdout  # readme.txt
    second = run("sync", "--config", str(path), "--source", "sample")
    assert "sample: 0 new, 0 updated, 3 unchanged, 0 failed" in second.stdout


def test_quarantine_list_shows_what_failed_and_why(project):
    path, _ = project
    archive = path.parent / "archive"
    broken = __import__("pydicom").dcmread(get_testdata_file("CT_small.dcm"))
    del broken.StudyInstanceUID
    broken.save_as(archive / "broken.dcm")
    assert run("quarantine", "list", "--config", str(path)).stdout.strip() == "the quarantine is empty"
    synced = run("sync", "--config", str(path))
    assert "1 failed" in synced.stdout and "quarantine list --source sample" in synced.stdout
    listed = run("quarantine", "list", "--config", str(path), "--source", "sample")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.strip().splitlines()
    assert header.split("\t") == ["source", "study uid", "location", "first seen", "last seen", "reason"]
    source, uid, location, first, last, reason = row.split("\t")
    assert (source, uid, location) == ("sample", "-", "broken.dcm")
    assert first.endswith("Z") and "StudyInstanceUID" in reason
    unknown = run("quarantine", "list", "--config", str(path), "--source", "nope")
    assert unknown.returncode == 2 and "nope" in unknown.stderr


def test_sync_unknown_source_is_named(project):
    path, _ = project
    result = run("sync", "--config", str(path), "--source", "nope")
    assert result.returncode == 2 and "no source named 'nope'" in result.stderr


def test_sync_unreachable_archive_ends_with_clear_error(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": "sqlite:///f.db",
                "sources": [{"name": "pacs", "type": "dicomweb", "url": f"http://127.0.0.1:{free_port()}/dicom-web"}],
            }
        )
    )
    result = run("sync", "--config", str(config))
    assert result.returncode == 1
    assert "pacs" in result.stderr and "sync stopped" in result.stderr
    assert "Traceback" not in result.stderr


def _wait(url: str, proc: subprocess.Popen) -> requests.Response:
    for _ in range(300):
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        try:
            return requests.get(url, timeout=1)
        except requests.RequestException:
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def test_serve_runs_gunicorn_and_serves_synced_studies(project):
    path, port = project
    proc = subprocess.Popen(
        [CLI, "serve", "--config", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        metadata = _wait(f"http://127.0.0.1:{port}/fhir/metadata", proc)
        assert metadata.status_code == 200
        assert metadata.headers["Server"].startswith("gunicorn")  # not Flask's development server
        assert metadata.json()["fhirVersion"] == "4.0.1"
        bundle = requests.get(f"http://127.0.0.1:{port}/fhir/ImagingStudy?modality=CT").json()
        ct_uid = str(__import__("pydicom").dcmread(get_testdata_file("CT_small.dcm")).StudyInstanceUID)
        assert [e["resource"]["id"] for e in bundle["entry"]] == [ct_uid]
        assert bundle["link"][0]["url"].startswith(f"http://127.0.0.1:{port}/fhir/ImagingStudy")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # waits, and closes its pipes


def test_serve_port_override_moves_links(project):
    path, _ = project
    port = free_port()
    proc = subprocess.Popen(
        [CLI, "serve", "--config", str(path), "--port", str(port), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait(f"http://127.0.0.1:{port}/fhir/metadata", proc)
        bundle = requests.get(f"http://127.0.0.1:{port}/fhir/Endpoint").json()
        assert bundle["entry"][0]["fullUrl"] == f"http://127.0.0.1:{port}/fhir/Endpoint/sample"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # waits, and closes its pipes


def test_open_server_refused_on_network_address(project):
    path, _ = project
    result = run("serve", "--config", str(path), "--host", "0.0.0.0", timeout=60)
    assert result.returncode == 2
    assert "security.open" in result.stderr


def test_closed_server_needs_a_token(project, tmp_path):
    path, port = project
    config = yaml.safe_load(path.read_text())
    config["security"] = {"open": False}
    closed = tmp_path / "closed.yaml"
    closed.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [CLI, "serve", "--config", str(closed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert _wait(f"http://127.0.0.1:{port}/fhir/metadata", proc).status_code == 200
        response = requests.get(f"http://127.0.0.1:{port}/fhir/ImagingStudy")
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["resourceType"] == "OperationOutcome"
        assert requests.get(f"http://127.0.0.1:{port}/fhir/Patient/x").status_code == 401
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # waits, and closes its pipes
