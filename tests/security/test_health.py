"""What `/health` tells whom: anyone may see whether each source is fresh or failing, but the
text of its last error, which names the archive's internal address, only an operator sees
(an administrator's token, as the identity review API asks, or a request made on this host).
Tokens come from the real authorization server process; the failing archive is a real
connection refused on a free loopback port."""

from __future__ import annotations

import pytest

from app.store.repository import Store
from app.sync import sync_source
from app.web import create_app
from testbed.orthanc import free_port
from tests.support.smart_auth import bearer, security_config

NETWORK = {"REMOTE_ADDR": "203.0.113.9"}
LOOPBACK = {"REMOTE_ADDR": "127.0.0.1"}


@pytest.fixture
def failing(write_config, sqlite_url, auth_server):
    """A facade checking the test server's tokens, whose one archive cannot be reached: (its
    test client, the archive's address)."""
    dead = f"http://127.0.0.1:{free_port()}/internal-pacs/dicom-web"
    config = write_config(
        {
            "store": sqlite_url,
            "server": {"base_url": "http://testserver/fhir"},
            "security": security_config(auth_server),
            "sources": [{"name": "pacs", "type": "dicomweb", "url": dead, "timeout": 1}],
        }
    )
    store = Store.from_config(config)
    assert sync_source(store, config.sources[0]).error
    yield create_app(config, store).test_client(), dead
    store.close()


def _source(client, environ, headers=None) -> tuple[dict, bytes]:
    response = client.get("/health", environ_base=environ, headers=headers or {})
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "degraded"  # what a monitor needs, whoever asks
    [source] = body["sources"]
    assert source["status"] == "failing" and source["lastErrorAt"].endswith("Z")
    return source, response.get_data()


def test_the_last_error_is_withheld_from_the_network(failing):
    client, _ = failing
    source, raw = _source(client, NETWORK)
    assert "lastError" not in source
    assert b"127.0.0.1" not in raw and b"internal-pacs" not in raw


def test_an_operator_on_this_host_sees_the_last_error(failing):
    client, dead = failing
    source, _ = _source(client, LOOPBACK)
    assert dead in source["lastError"]  # what the operator needs to find the archive


@pytest.mark.parametrize(
    "header",
    [
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9"},
        {"X-Real-IP": "203.0.113.9"},
    ],
)
def test_a_proxy_on_this_host_does_not_make_its_clients_local(failing, header):
    client, _ = failing
    source, raw = _source(client, LOOPBACK, header)
    assert "lastError" not in source and b"internal-pacs" not in raw


def test_an_administrators_token_sees_the_last_error(failing, auth_server):
    """The identity review API's scopes (Patient update, no patient in context) make an operator."""
    client, dead = failing
    for scope in ("system/Patient.u", "user/Patient.cruds", "system/*.write"):
        source, _ = _source(client, NETWORK, bearer(auth_server.sign({"scope": scope})))
        assert dead in source["lastError"], scope


@pytest.mark.parametrize(
    "claims",
    [
        {"scope": "system/*.rs"},  # reads everything, administers nothing
        {"scope": "patient/*.*", "patient": "x"},  # bound to one patient
        {"scope": "system/Patient.u", "exp": 1},  # expired: not counted, not refused either
        {"scope": "system/Patient.u", "aud": "http://elsewhere.example/fhir"},
    ],
)
def test_other_tokens_do_not_see_it_and_are_not_refused(failing, auth_server, claims):
    client, _ = failing
    source, raw = _source(client, NETWORK, bearer(auth_server.sign(claims)))
    assert "lastError" not in source and b"internal-pacs" not in raw


def test_a_malformed_authorization_header_is_not_refused_either(failing):
    client, _ = failing
    for value in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer a b c"):
        source, _ = _source(client, NETWORK, {"Authorization": value})
        assert "lastError" not in source


def test_an_open_server_shows_it_to_anyone(write_config, sqlite_url):
    """Open mode serves every patient's data without a token; the identity review API is open too."""
    dead = f"http://127.0.0.1:{free_port()}/internal-pacs/dicom-web"
    config = write_config(
        {
            "store": sqlite_url,
            "security": {"open": True},
            "sources": [{"name": "pacs", "type": "dicomweb", "url": dead, "timeout": 1}],
        }
    )
    store = Store.from_config(config)
    sync_source(store, config.sources[0])
    source, _ = _source(create_app(config, store).test_client(), NETWORK)
    store.close()
    assert dead in source["lastError"]
