"""The secured server as it runs: `imaging-facade serve` under gunicorn, tokens from the test
authorization server, and what ends up in its log (never a patient's name or id, never a token)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
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


def serve(config: dict, workdir: Path, port: int, env: dict | None = None, verify: str | bool = True):
    """`imaging-facade serve` with `config`, once it answers /metadata (over HTTPS, checked
    against the CA file `verify`, when the config has `server.tls`)."""
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(workdir / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--config", str(path)],
        cwd=ROOT,
        env={**(os.environ if env is None else env), "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 60
    while True:
        try:
            scheme = "https" if config["server"].get("tls") else "http"
            if requests.get(f"{scheme}://127.0.0.1:{port}/fhir/metadata", timeout=1, verify=verify).status_code == 200:
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


def open_server_config(tmp_path: Path, port: int) -> dict:
    return {
        "store": f"sqlite:///{tmp_path / 'facade.db'}",
        "server": {"base_url": f"http://127.0.0.1:{port}/fhir", "host": "127.0.0.1", "port": port, "workers": 1},
        "security": {"open": True},
        "sources": [],
    }


def send_raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(data)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def test_malformed_requests_leave_no_request_content_in_the_log(tmp_path):
    port = free_port()
    proc, log = serve(open_server_config(tmp_path, port), tmp_path, port)
    sentinel = "Quixotewhitlam"  # a made-up family name, in every part of a request gunicorn may quote
    try:
        for raw in (
            f"GET /fhir/Patient?name={sentinel} Doe HTTP/1.1\r\nHost: x\r\n\r\n",  # unencoded space
            f"GET /fhir/Patient/{sentinel} HTTP/9.{sentinel}\r\nHost: x\r\n\r\n",
            f"{sentinel}\x7f /fhir/Patient HTTP/1.1\r\nHost: x\r\n\r\n",
            f"GET /fhir/Patient?name={sentinel}\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
            f"GET /fhir/Patient HTTP/1.1\r\nHost: x\r\nX-{sentinel}\x01: 1\r\n\r\n",
            f"GET /fhir/Patient HTTP/1.1\r\nHost: x\r\nX-Name: a\r\n {sentinel}\r\n\r\n",  # obsolete folding
            f"GET /fhir/Patient?name={sentinel}{'x' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST /fhir/Patient/_search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\n\r\n{sentinel}\r\nname={sentinel}\r\n0\r\n\r\n",
        ):
            assert send_raw(port, raw.encode("latin-1")).startswith(b"HTTP/1.1 ")
        # the server still serves, and did log each refusal
        assert requests.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=10).status_code == 200
    finally:
        time.sleep(0.5)  # let gunicorn flush its log
        stop(proc, log)
    served_log = (tmp_path / "serve.log").read_text()
    assert sentinel.lower() not in served_log.lower()
    assert served_log.count("Invalid request from ip=127.0.0.1") >= 6
    assert "Invalid request from ip=127.0.0.1: Invalid HTTP Version (the request's content is not logged)" in served_log


def test_two_servers_on_one_host_leave_each_others_control_socket_alone():
    """gunicorn 25.1+ opens a control socket at one path per user; an instance started there
    before (here a listener of the test's own, standing for another gunicorn) keeps its socket."""
    home = Path(tempfile.mkdtemp(prefix="home-", dir="/tmp"))  # a Unix socket path is short
    try:
        (home / ".gunicorn").mkdir()
        path = home / ".gunicorn" / "gunicorn.ctl"
        other = socket.socket(socket.AF_UNIX)
        other.bind(str(path))
        other.listen()
        before = path.stat().st_ino
        env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"} | {"HOME": str(home)}
        servers = []
        for name in ("one", "two"):
            (home / name).mkdir()
            port = free_port()
            servers.append((serve(open_server_config(home / name, port), home / name, port, env), port))
        for _, port in servers:
            assert requests.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=10).status_code == 200
        for (proc, log), _ in servers:
            stop(proc, log)
        assert path.stat().st_ino == before
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))  # still the other instance's listener
        assert [p.name for p in (home / ".gunicorn").iterdir()] == ["gunicorn.ctl"]
        for name in ("one", "two"):
            assert "Control socket listening" not in (home / name / "serve.log").read_text()
        other.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
