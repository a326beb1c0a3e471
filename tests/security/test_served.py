"""The secured server as it runs: `imaging-facade serve` under gunicorn, tokens from the test
authorization server, and what ends up in its log (never a patient's name or id, never a token)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import requests
import yaml
from pydicom.data import get_testdata_file

from testbed.orthanc import free_port
from tests.support.smart_auth import AUDIENCE, SAMPLE_FILES, BackendClient, bearer, rsa_jwk

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.server


def patient_words() -> set[str]:
    """Names and ids of the test patients, read from the DICOM files."""
    words = set()
    for name in SAMPLE_FILES:
        ds = pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)
        words.add(str(ds.PatientID))
        words.update(part for part in str(ds.PatientName).replace("^", " ").split() if len(part) > 2)
    return words


def serve(config: dict, workdir: Path, port: int):
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(workdir / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--config", str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 60
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=1).status_code == 200:
                return proc, log
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            log.close()
            raise RuntimeError((workdir / "serve.log").read_text()[-3000:])
        time.sleep(0.2)


def stop(proc, log) -> None:
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(params=["text", "json"])
def served(request, tmp_path, archive, auth_server):
    """The secured server, logging plain lines or JSON objects (`logging.format`)."""
    port = free_port()
    config = {
        "store": f"sqlite:///{tmp_path / 'facade.db'}",
        "server": {
            "base_url": f"http://127.0.0.1:{port}/fhir",
            "host": "127.0.0.1",
            "port": port,
            "workers": 1,
            "sync_on_start": True,
        },
        "security": {
            "open": False,
            "issuer": auth_server.issuer,
            "audience": AUDIENCE,
            "jwks_uri": auth_server.jwks_uri,
            "token_endpoint": auth_server.token_url,
        },
        "sources": [{"name": "sample", "type": "folder", "path": str(archive), "timezone": "UTC"}],
        "logging": {"format": request.param},
    }
    proc, log = serve(config, tmp_path, port)
    yield f"http://127.0.0.1:{port}/fhir", tmp_path / "serve.log", request.param
    stop(proc, log)


def test_served_end_to_end_and_nothing_personal_in_the_log(served, auth_server, app, caplog):
    base, log_path, _ = served
    client = BackendClient(auth_server, "served-backend")
    token = client.token("system/*.rs")
    words = patient_words()
    bundle = requests.get(f"{base}/Patient", headers=bearer(token)).json()
    patient_ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert patient_ids
    words.update(patient_ids)
    expired = auth_server.sign({"scope": "patient/*.rs", "patient": patient_ids[0], "exp": int(time.time()) - 900})
    narrow = auth_server.sign({"scope": "patient/Endpoint.rs", "patient": patient_ids[0]})
    forged = auth_server.sign({"scope": "system/*.rs", "sub": words.copy().pop()}, key=rsa_jwk("x")[1], kid="nope")
    caplog.set_level(logging.DEBUG)
    api = app.test_client()
    for send in (
        lambda path, headers: requests.get(f"{base}{path}", headers=headers, timeout=10),
        lambda path, headers: api.get(f"/fhir{path}", headers=headers),
    ):
        for pid in patient_ids:
            assert send(f"/ImagingStudy?patient={pid}", bearer(token)).status_code == 200
            assert send(f"/ImagingStudy?patient={pid}", bearer(expired)).status_code == 401
            assert send(f"/ImagingStudy?patient={pid}", bearer(narrow)).status_code == 403
            assert send(f"/ImagingStudy?patient={pid}", bearer(forged)).status_code == 401
            assert send(f"/ImagingStudy?patient={pid}&started=not-a-date", bearer(token)).status_code == 400
        for word in words:
            assert send(f"/Patient?name={word}", bearer(token)).status_code == 200
            assert send(f"/Patient?identifier={word}", {}).status_code == 401
    time.sleep(0.5)  # let gunicorn flush its log
    served_log = log_path.read_text()
    assert "Booting worker" in served_log and "fetched 1 signing keys" in served_log  # gunicorn and the app log here
    # the test's own HTTP client (urllib3) logs the URLs it asks for; everything else is the server's
    app_log = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("urllib3"))
    assert "fetched 1 signing keys" in app_log  # the server's own records are there
    for text, where in ((served_log, "gunicorn log"), (app_log, "application log")):
        for secret in words | {token, expired, narrow, forged}:
            assert secret not in text, f"{where} contains patient data or a token"


def test_a_json_log_is_one_object_per_line_with_each_requests_id_and_timing(served, auth_server):
    base, log_path, log_format = served
    token = auth_server.sign({"scope": "system/*.rs"})
    asked = requests.get(f"{base}/Patient?name=Anders", headers={**bearer(token), "X-Request-ID": "ehr-7f3a"})
    assert asked.status_code == 200
    assert asked.headers["X-Request-ID"] == "ehr-7f3a", "the caller's id comes back"
    made = requests.get(f"{base}/ImagingStudy", headers={**bearer(token), "X-Request-ID": "two words\tand a tab"})
    assert len(made.headers["X-Request-ID"]) == 32 and " " not in made.headers["X-Request-ID"], "a new id, not that"
    time.sleep(0.5)
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    if log_format == "text":
        assert not any(line.startswith("{") for line in lines)  # text: plain lines
        return
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert {"time", "level", "logger", "event", "request_id"} <= set(record), record
    assert any(r["logger"] == "gunicorn.error" and "Booting worker" in r["event"] for r in records)
    ours = [r for r in records if r["request_id"] == "ehr-7f3a"]
    assert ours and ours[-1]["route"] == "/fhir/<rtype>" and ours[-1]["status"] == 200
    assert ours[-1]["duration_ms"] > 0 and ours[-1]["type"] == "Patient"
    assert made.headers["X-Request-ID"] in {r["request_id"] for r in records}
    assert "Anders" not in log_path.read_text(), "a search value never reaches the log"


def test_an_oversized_header_gets_431(served, auth_server):
    base, _, _ = served
    response = requests.get(f"{base}/ImagingStudy", headers={"Authorization": "Bearer " + "a" * 9000})
    assert response.status_code == 431
    token = auth_server.sign({"scope": "system/*.rs"})
    assert requests.get(f"{base}/ImagingStudy", headers=bearer(token)).status_code == 200


@pytest.mark.parametrize(
    "security, warning",
    [
        ({"open": True}, "security.open is true: the FHIR API answers without any token"),
        ({"open": False}, "no token validator configured"),
    ],
)
def test_serve_warns_at_start(tmp_path, security, warning):
    port = free_port()
    config = {
        "store": f"sqlite:///{tmp_path / 'facade.db'}",
        "server": {"base_url": f"http://127.0.0.1:{port}/fhir", "host": "127.0.0.1", "port": port, "workers": 1},
        "security": security,
        "sources": [],
    }
    proc, log = serve(config, tmp_path, port)
    stop(proc, log)
    assert warning in (tmp_path / "serve.log").read_text()
