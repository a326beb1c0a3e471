"""Archives over TLS (a source's `tls:`): DICOMweb over HTTPS with a client certificate (mutual
TLS), Orthanc's change feed and the WADO-RS gateway on the same keys, and DIMSE over TLS (DICOM
PS3.15 Annex B.1), against a real Orthanc 1.10 with certificates the tests make
(testbed/certs.py). DICOM TLS is Orthanc's own; its HTTPS is HAProxy's in front of it, because
Debian 12's Orthanc crashes on its own HTTPS (testbed/tls_front.py).

A wrong CA, an expired archive certificate and a client certificate the archive refuses (or one
missing where it wants one) fail the sync with the source and the TLS reason, without a
traceback, and lose nothing: the store keeps what it held, and /health says why.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml
from sqlalchemy import select

from app.config import load_config
from app.store.repository import Store
from app.store.tables import Resource
from app.sync import sync_source
from app.web import create_app
from testbed.certs import Issued, TestPki
from testbed.orthanc import OrthancServer, OrthancTls, readable_testdata_files
from tests.support.keys import SHARED_IDENTITY, SHARED_SECRET, SHARED_SECRET_ENV

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]
CLI = str(Path(sys.executable).parent / "imaging-facade")


class Pki:
    """The certificates of these tests."""

    def __init__(self, folder: Path):
        pki = TestPki(folder)
        self.ca = pki.ca("Hospital CA")
        self.other_ca = pki.ca("Other CA")
        self.server = pki.issue(self.ca, "pacs", server=True)
        self.expired = pki.issue(self.ca, "pacs", server=True, expired=True)
        self.client = pki.issue(self.ca, "facade", server=False)
        self.stranger = pki.issue(self.other_ca, "stranger", server=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_orthanc(pki):
    """Orthanc with HTTPS and DICOM TLS, both requiring a client certificate of the hospital CA,
    holding the same files as the plain `orthanc`."""
    with OrthancServer(tls=OrthancTls(ca=pki.ca, server=pki.server, client_ca=pki.ca.cert)) as server:
        server.upload(readable_testdata_files())
        yield server


@pytest.fixture(scope="module")
def expired_orthanc(pki):
    """Orthanc whose certificate (HTTPS and DICOM TLS) expired yesterday."""
    with OrthancServer(tls=OrthancTls(ca=pki.ca, server=pki.expired)) as server:
        server.upload(readable_testdata_files()[:5])
        yield server


def _keys(ca: Issued, client: Issued | None = None) -> dict:
    keys = {"ca_bundle": str(ca.cert)}
    if client is not None:
        keys |= {"certfile": str(client.cert), "keyfile": str(client.key)}
    return keys


def _source(kind: str, server: OrthancServer, tls: dict | None) -> dict:
    if kind == "dicomweb":
        source = {"name": "pacs", "type": "dicomweb", "url": server.dicomweb_url, "changes": "orthanc"}
    else:
        source = {"name": "pacs", "type": "dimse", "host": "127.0.0.1", "port": server.dicom_port}
        source["called_aet"] = server.aet
    return source | ({"tls": tls} if tls is not None else {}) | {"timeout": 10}


def _config(folder: Path, source: dict, **server):
    path = folder / "config.yaml"
    # the stores of separate runs are compared row for row: one Patient id key
    data = {
        "store": "sqlite:///facade.db",
        "security": {"open": True},
        "identity": SHARED_IDENTITY,
        "sources": [source],
    }
    if server:
        data["server"] = server
    path.write_text(yaml.safe_dump(data))
    return load_config(path, environ={SHARED_SECRET_ENV: SHARED_SECRET})


def contents(store: Store) -> dict:
    """(type, id) -> the resource without meta and the archive's address (another port for each
    Orthanc, another scheme over TLS), nor the narrative, which names it."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(Resource.rtype, Resource.id, Resource.content)).all()
    return {
        (r.rtype, r.id): {k: v for k, v in orjson.loads(r.content).items() if k not in ("meta", "address", "text")}
        for r in rows
    }


def versions(store: Store) -> dict:
    """(type, id) -> (versionId, lastUpdated, content) of every stored resource."""
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(Resource.rtype, Resource.id, Resource.version, Resource.last_updated, Resource.content)
        ).all()
    return {(r.rtype, r.id): (r.version, r.last_updated, r.content) for r in rows}


def _synced(config) -> dict:
    store = Store.from_config(config)
    try:
        summary = sync_source(store, config.sources[0])
        assert summary.error is None, summary.error
        assert summary.new > 10
        return contents(store)
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_a_sync_over_tls_with_a_client_certificate_stores_what_a_plain_one_does(
    kind, pki, tls_orthanc, orthanc, tmp_path, monkeypatch
):
    # the source's CA bundle wins over one the host's environment names for requests
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.other_ca.cert))
    (tmp_path / "plain").mkdir()
    (tmp_path / "tls").mkdir()
    plain = _synced(_config(tmp_path / "plain", _source(kind, orthanc, None)))
    over_tls = _synced(_config(tmp_path / "tls", _source(kind, tls_orthanc, _keys(pki.ca, pki.client))))
    assert over_tls == plain


def test_the_wado_gateway_fetches_images_with_the_source_keys(pki, tls_orthanc, tmp_path, caplog):
    def config(keys: dict):
        return _config(
            tmp_path,
            _source("dicomweb", tls_orthanc, keys),
            base_url="http://127.0.0.1:8080/fhir",
            wado_gateway=True,
        )

    right = config(_keys(pki.ca, pki.client))
    store = Store.from_config(right)
    try:
        assert sync_source(store, right.sources[0]).error is None
        uid = tls_orthanc.studies()[0]["MainDicomTags"]["StudyInstanceUID"]
        path, accept = f"/wado-rs/pacs/studies/{uid}/metadata", {"Accept": "application/dicom+json"}
        answer = create_app(right, store).test_client().get(path, headers=accept)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        instances = orjson.loads(answer.get_data())
        assert instances and all(i["0020000D"]["Value"] == [uid] for i in instances)
        # without a client certificate the archive refuses: 502 to the app, the reason in the log
        answer = create_app(config(_keys(pki.ca)), store).test_client().get(path, headers=accept)
        assert answer.status_code == 502
        assert "TLS failed: tlsv13 alert certificate required" in caplog.text
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_a_wrong_ca_stops_the_sync_naming_the_reason_and_loses_nothing(kind, pki, tls_orthanc, tmp_path):
    right = _config(tmp_path, _source(kind, tls_orthanc, _keys(pki.ca, pki.client)))
    store = Store.from_config(right)
    assert sync_source(store, right.sources[0]).error is None
    before = versions(store)
    assert sum(1 for rtype, _ in before if rtype == "ImagingStudy") > 10
    store.close()

    _config(tmp_path, _source(kind, tls_orthanc, _keys(pki.other_ca, pki.client)))  # rewrites config.yaml
    result = subprocess.run(
        [CLI, "sync", "--config", str(tmp_path / "config.yaml")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "pacs" in result.stderr and "TLS failed: certificate verify failed" in result.stderr, result.stderr

    wrong = load_config(tmp_path / "config.yaml", environ={SHARED_SECRET_ENV: SHARED_SECRET})
    store = Store.from_config(wrong)
    try:
        assert versions(store) == before  # nothing changed, nothing deleted as "gone from the archive"
        health = create_app(wrong, store).test_client().get("/health").get_json()
    finally:
        store.close()
    (pacs,) = health["sources"]
    assert pacs["status"] == "failing"
    assert "certificate verify failed" in pacs["lastError"]


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_an_expired_archive_certificate_stops_the_sync(kind, pki, expired_orthanc, tmp_path):
    config = _config(tmp_path, _source(kind, expired_orthanc, _keys(pki.ca)))
    store = Store.from_config(config)
    source = config.sources[0].open()
    try:
        summary = sync_source(store, config.sources[0], source=source)
        assert summary.error is not None
        assert "source 'pacs'" in summary.error
        assert "TLS failed: certificate verify failed: certificate has expired" in summary.error
        assert summary.new == 0
    finally:
        store.close()
    assert source.stats["retries"] == 0  # a certificate is not fixed by asking again


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
@pytest.mark.parametrize(
    ("client", "reason"),
    [
        (None, "the archive asks for a client certificate: set tls.certfile and tls.keyfile"),
        ("stranger", "the archive refused the client certificate"),
    ],
)
def test_a_missing_or_refused_client_certificate_stops_the_sync(kind, client, reason, pki, tls_orthanc, tmp_path):
    config = _config(tmp_path, _source(kind, tls_orthanc, _keys(pki.ca, getattr(pki, client) if client else None)))
    store = Store.from_config(config)
    try:
        summary = sync_source(store, config.sources[0])
    finally:
        store.close()
    assert summary.error is not None and summary.new == 0
    assert "source 'pacs'" in summary.error and "TLS failed: " in summary.error
    assert reason in summary.error
