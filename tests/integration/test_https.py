"""HTTPS served by `imaging-facade serve` itself (`server.tls`): TLS 1.2 or later only, HSTS, no
plain HTTP on the port, a renewed certificate taken up without a failed request, and a bad
certificate or key named by the config check."""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
import time
import warnings

import pytest
import requests
from click.testing import CliRunner
from cryptography import x509

from app.cli import main as cli
from testbed.certs import Issued, TestPki
from testbed.orthanc import free_port
from tests.security.test_served import serve, stop

pytestmark = [pytest.mark.server, pytest.mark.slow]


def served_serial(port: int, ca: str) -> int:
    context = ssl.create_default_context(cafile=ca)
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1") as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def negotiated(port: int, ca: str, version: ssl.TLSVersion) -> str:
    """The protocol a client that speaks only `version` gets, or why the handshake failed. The
    client is willing (the lowest security level): a refusal is the server's."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is offered on purpose
        client.set_ciphers("DEFAULT:@SECLEVEL=0")
        client.minimum_version = client.maximum_version = version
    try:
        with client.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1") as tls:
            return str(tls.version())
    except ssl.SSLError as exc:
        return f"refused: {exc}"


class Authority:
    """A CA of the test's own (testbed/certs.py) and the server certificates it issues."""

    def __init__(self, folder):
        self.pki = TestPki(folder)
        self.ca = self.pki.ca("Test CA")
        self.certfile = self.ca.cert

    def issue(self, name: str) -> Issued:
        return self.pki.issue(self.ca, name, server=True)


def serial(issued: Issued) -> int:
    return issued.certificate.serial_number


def https_config(tmp_path, port: int, authority: Authority, **tls) -> dict:
    issued = authority.issue("server")
    live = tmp_path / "live"
    live.mkdir()
    shutil.copyfile(issued.cert, live / "server.pem")
    shutil.copyfile(issued.key, live / "server.key")
    return {
        "store": f"sqlite:///{tmp_path / 'facade.db'}",
        "server": {
            "base_url": f"https://127.0.0.1:{port}/fhir",
            "host": "127.0.0.1",
            "port": port,
            "workers": 2,
            "tls": {"certfile": str(live / "server.pem"), "keyfile": str(live / "server.key"), **tls},
        },
        "security": {"open": True},
        "sources": [],
    }, issued


@pytest.fixture
def https(tmp_path):
    authority = Authority(tmp_path / "ca")
    port = free_port()
    config, issued = https_config(tmp_path, port, authority, reload_check=1)
    proc, log = serve(config, tmp_path, port, verify=str(authority.certfile))
    yield f"https://127.0.0.1:{port}/fhir", port, authority, issued, tmp_path
    stop(proc, log)


def test_https_with_tls_1_2_or_later_and_hsts(https):
    base, port, authority, issued, _ = https
    answer = requests.get(f"{base}/metadata", verify=str(authority.certfile), timeout=10)
    assert answer.status_code == 200
    assert answer.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert answer.json()["implementation"]["url"].startswith("https://")
    assert served_serial(port, str(authority.certfile)) == serial(issued)

    assert negotiated(port, str(authority.certfile), ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    assert negotiated(port, str(authority.certfile), ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    refused = negotiated(port, str(authority.certfile), ssl.TLSVersion.TLSv1_1)
    assert refused.startswith("refused") and "NO_PROTOCOLS_AVAILABLE" not in refused, "the server refuses 1.1"
    with pytest.raises(requests.ConnectionError):  # no plain HTTP on the HTTPS port
        requests.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=5)


def test_a_renewed_certificate_is_served_without_a_failed_request(https):
    base, port, authority, issued, tmp_path = https
    ca = str(authority.certfile)
    failures: list[str] = []
    answered = 0
    stop_load = threading.Event()

    def get() -> int:
        # a new connection each time: every handshake meets whichever certificate is served. A
        # connection an old worker closes as it leaves is tried again once, as HTTP clients and
        # balancers retry an idempotent GET (RFC 9110 §9.2.2); a refusal or an error answer is not
        try:
            return requests.get(f"{base}/ImagingStudy", verify=ca, timeout=30).status_code
        except requests.ConnectionError:
            return requests.get(f"{base}/ImagingStudy", verify=ca, timeout=30).status_code

    def load() -> None:
        nonlocal answered
        while not stop_load.is_set():
            try:
                status = get()
                if status != 200:
                    failures.append(str(status))
                answered += 1
            except requests.RequestException as exc:
                failures.append(type(exc).__name__)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    renewed = authority.issue("renewed")
    shutil.copyfile(renewed.key, tmp_path / "live" / "server.key")  # as a renewal tool does it: key, then cert
    shutil.copyfile(renewed.cert, tmp_path / "live" / "server.pem")
    deadline = time.monotonic() + 30
    while served_serial(port, ca) != serial(renewed) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # the old workers finish what they hold meanwhile
    stop_load.set()
    for thread in threads:
        thread.join()
    assert served_serial(port, ca) == serial(renewed), "the renewed certificate is served"
    assert answered > 20
    assert failures == [], f"{len(failures)} of {answered + len(failures)} requests failed: {failures[:5]}"


def run_check(config: dict, tmp_path) -> tuple[int, str]:
    import yaml

    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["check-config", "--config", str(path)])
    return result.exit_code, result.output


def test_a_missing_certificate_a_key_that_does_not_match_and_plain_links_are_named(tmp_path):
    authority = Authority(tmp_path / "ca")
    config, _ = https_config(tmp_path, free_port(), authority)
    other = authority.issue("other")

    config["server"]["tls"]["certfile"] = str(tmp_path / "nowhere.pem")
    status, output = run_check(config, tmp_path)
    assert status == 2 and "server.tls.certfile" in output and "nowhere.pem" in output

    config["server"]["tls"]["certfile"] = str(tmp_path / "live" / "server.pem")
    config["server"]["tls"]["keyfile"] = str(other.key)
    status, output = run_check(config, tmp_path)
    assert status == 2 and "server.tls.keyfile" in output

    config["server"]["tls"]["keyfile"] = str(tmp_path / "live" / "server.key")
    config["server"]["base_url"] = config["server"]["base_url"].replace("https://", "http://")
    status, output = run_check(config, tmp_path)
    assert status == 2 and "server.base_url" in output and "https://" in output
    assert "Traceback" not in output
