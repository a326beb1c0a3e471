"""A source's `tls:` keys in the config: the files load relative to the config file and reach
every connection to the archive; a missing, unreadable or wrong file stops the command naming
its key (`sources[i].tls.certfile`)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from app.sources.dicomweb_settings import DicomwebSettings
from app.sources.dimse_settings import DimseSettings
from app.sources.tls import TlsSettings, certificate_refused, refused, ssl_reason, tls_reason
from testbed.certs import TestPki
from tests.support.configs import config_problems, load_text


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """certs/ with pacs-ca.pem, facade.pem and facade.key, as the documentation names them."""
    folder = tmp_path_factory.mktemp("conf") / "certs"
    pki = TestPki(folder)
    ca = pki.ca("Pacs CA")
    client = pki.issue(ca, "facade", server=False)
    ca.cert.rename(folder / "pacs-ca.pem")
    client.cert.rename(folder / "facade.pem")
    client.key.rename(folder / "facade.key")
    return folder


def _text(kind: str, tls: dict[str, str]) -> str:
    lines = ["store: sqlite:///facade.db", "sources:", "  - name: pacs", f"    type: {kind}"]
    if kind == "dicomweb":
        lines += ["    url: https://pacs.example:8443/dicom-web", "    changes: orthanc"]
    elif kind == "dimse":
        lines += ["    host: pacs.example", "    port: 2762", "    called_aet: PACS"]
    else:
        lines += ["    path: ./archive", "    wado_url: https://pacs.example:8443/dicom-web"]
    lines += ["    tls:"] + [f"      {key}: {value}" for key, value in tls.items()]
    return "\n".join(lines) + "\n"


KEYS = {"ca_bundle": "./certs/pacs-ca.pem", "certfile": "./certs/facade.pem", "keyfile": "./certs/facade.key"}


@pytest.mark.parametrize("kind", ["dicomweb", "dimse", "folder"])
def test_the_keys_load_relative_to_the_config_file_and_reach_the_protocol(kind, certs):
    (src,) = load_text(certs.parent, _text(kind, KEYS)).sources
    expected = TlsSettings(certs / "pacs-ca.pem", certs / "facade.pem", certs / "facade.key")
    assert src.wado_tls == expected  # the WADO-RS gateway's requests for the source's images
    if kind != "folder":
        assert isinstance(src.protocol, (DicomwebSettings, DimseSettings))
        assert src.protocol.tls == expected
    if kind == "dimse":
        assert "over TLS" in src.protocol.where()
        context = expected.ssl_context()
        assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
        assert context.check_hostname


def test_a_ca_bundle_alone_is_enough(certs):
    (src,) = load_text(certs.parent, _text("dicomweb", {"ca_bundle": "certs/pacs-ca.pem"})).sources
    assert src.protocol.tls == TlsSettings(ca_bundle=certs / "pacs-ca.pem")
    assert src.protocol.tls.verify == str(certs / "pacs-ca.pem") and src.protocol.tls.cert is None


def test_without_tls_nothing_changes(tmp_path):
    text = "store: sqlite:///facade.db\nsources:\n  - {name: pacs, type: dicomweb, url: 'https://pacs/dicom-web'}\n"
    (src,) = load_text(tmp_path, text).sources
    assert src.protocol.tls is None and src.wado_tls is None


@pytest.mark.parametrize("key", ["ca_bundle", "certfile", "keyfile"])
def test_a_missing_file_is_named_by_its_key(key, certs):
    problems = config_problems(certs.parent, _text("dicomweb", KEYS | {key: "./certs/nowhere.pem"}))
    assert list(problems) == [f"sources[0].tls.{key}"]
    assert "nowhere.pem" in problems[f"sources[0].tls.{key}"][0]


def test_a_folder_in_place_of_a_file_is_named(certs):
    problems = config_problems(certs.parent, _text("dicomweb", KEYS | {"certfile": "./certs"}))
    assert list(problems) == ["sources[0].tls.certfile"]


def test_a_file_that_is_not_what_its_key_says_is_named(certs, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    problems = config_problems(certs.parent, _text("dimse", KEYS | {"ca_bundle": str(junk)}))
    assert list(problems) == ["sources[0].tls.ca_bundle"]
    # a key that is not the certificate's
    pki = TestPki(tmp_path / "other")
    other = pki.issue(pki.ca("X"), "x", server=False)
    problems = config_problems(certs.parent, _text("dimse", KEYS | {"keyfile": str(other.key)}))
    assert list(problems) == ["sources[0].tls.keyfile"]
    assert "do not load" in problems["sources[0].tls.keyfile"][0]


def test_a_keyfile_needs_its_certfile_and_unknown_keys_are_refused(certs):
    problems = config_problems(certs.parent, _text("dicomweb", {"keyfile": "./certs/facade.key"}))
    assert "sources[0].tls.certfile" in problems
    problems = config_problems(certs.parent, _text("dicomweb", KEYS | {"verify": "false"}))
    assert "sources[0].tls.verify" in problems


def test_tls_reasons_read_as_openssl_says_them():
    expired = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    expired.verify_message = "certificate has expired"
    assert ssl_reason(expired, client_cert=True) == "certificate verify failed: certificate has expired"
    alert = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required (_ssl.c:2580)")
    assert ssl_reason(alert, client_cert=False).startswith("tlsv13 alert certificate required (the archive asks")
    wrapped = ConnectionError("HTTPSConnectionPool: Max retries exceeded")
    wrapped.__cause__ = alert
    assert tls_reason(wrapped, client_cert=True) == (
        "TLS failed: tlsv13 alert certificate required (the archive refused the client certificate)"
    )
    assert tls_reason(ConnectionRefusedError(111, "refused"), client_cert=False) is None


def test_a_refused_certificate_is_final_and_a_cut_connection_is_not():
    expired = ssl.SSLCertVerificationError(1, "certificate verify failed")
    alert = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:2580)")
    cut = ssl.SSLEOFError(8, "[SSL: UNEXPECTED_EOF_WHILE_READING] unexpected eof while reading (_ssl.c:1006)")
    assert refused(expired) and refused(alert) and not refused(cut)
    wrapped = ConnectionError("Max retries exceeded")
    wrapped.__context__ = cut
    assert not certificate_refused(wrapped) and not certificate_refused(ConnectionResetError())


@pytest.mark.parametrize("kind", ["dicomweb", "folder"])
def test_tls_on_a_source_without_an_https_address_is_refused(kind, certs):
    text = _text(kind, KEYS).replace("https://pacs.example", "http://pacs.example")
    problems = config_problems(certs.parent, text)
    assert list(problems) == ["sources[0].tls"]
    assert "is not https://" in problems["sources[0].tls"][0]
