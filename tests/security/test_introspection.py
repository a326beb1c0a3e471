"""RFC 7662 token introspection against the test authorization server: the facade asks the
server about each new token with its own client credentials, and believes only `active`."""

from __future__ import annotations

import os
import time

import pytest

from app.store.repository import Store
from app.sync import sync_source
from app.web import create_app
from tests.support.smart_auth import AUDIENCE, BackendClient, bearer


@pytest.fixture
def introspecting_app(write_config, sqlite_url, archive, auth_server):
    auth_server.register("facade-rs", secret="s3cret-for-tests")

    def make(secret="s3cret-for-tests", cache_seconds=30):
        config = write_config(
            {
                "store": sqlite_url,
                "server": {"base_url": AUDIENCE},
                "security": {
                    "open": False,
                    "issuer": auth_server.issuer,
                    "token_endpoint": auth_server.token_url,
                    "introspection": {
                        "url": f"{auth_server.url}/introspect",
                        "client_id": "facade-rs",
                        "client_secret": "${FACADE_INTROSPECTION_SECRET}",
                        "cache_seconds": cache_seconds,
                    },
                },
                "sources": [{"name": "sample", "type": "folder", "path": str(archive), "timezone": "UTC"}],
            },
            environ={**os.environ, "FACADE_INTROSPECTION_SECRET": secret},
        )
        store = Store.from_config(config)
        sync_source(store, config.sources[0])
        return create_app(config, store)

    return make


def test_an_active_token_is_accepted_with_its_scopes(introspecting_app, auth_server):
    api = introspecting_app().test_client()
    client = BackendClient(auth_server, "introspected-backend")
    token = client.token("system/ImagingStudy.rs")
    assert api.get("/fhir/ImagingStudy", headers=bearer(token)).status_code == 200
    assert api.get("/fhir/Patient", headers=bearer(token)).status_code == 403  # scopes from the answer


def test_an_inactive_token_is_refused(introspecting_app, auth_server):
    api = introspecting_app(cache_seconds=0).test_client()
    client = BackendClient(auth_server, "revoked-backend")
    token = client.token("system/*.rs")
    assert api.get("/fhir/Endpoint", headers=bearer(token)).status_code == 200
    auth_server.revoke(token)
    response = api.get("/fhir/Endpoint", headers=bearer(token))
    assert response.status_code == 401
    assert "not active" in response.get_json()["issue"][0]["diagnostics"]
    assert api.get("/fhir/Endpoint", headers=bearer("made-up-token")).status_code == 401


def test_answers_are_cached_briefly(introspecting_app, auth_server):
    api = introspecting_app(cache_seconds=1).test_client()
    client = BackendClient(auth_server, "cached-backend")
    token = client.token("system/*.rs")
    assert api.get("/fhir/Endpoint", headers=bearer(token)).status_code == 200
    auth_server.revoke(token)
    assert api.get("/fhir/Endpoint", headers=bearer(token)).status_code == 200  # the cached answer
    time.sleep(1.2)
    assert api.get("/fhir/Endpoint", headers=bearer(token)).status_code == 401


def test_a_token_for_another_audience_is_refused(introspecting_app, auth_server):
    api = introspecting_app().test_client()
    other = auth_server.sign({"scope": "system/*.rs", "aud": "http://elsewhere.example.org/fhir"})
    response = api.get("/fhir/Endpoint", headers=bearer(other))
    assert response.status_code == 401 and "not meant for this server" in response.get_json()["issue"][0]["diagnostics"]


def test_wrong_client_credentials_mean_the_server_cannot_check_tokens(introspecting_app, auth_server):
    api = introspecting_app(secret="wrong").test_client()
    token = BackendClient(auth_server, "unlucky-backend").token("system/*.rs")
    response = api.get("/fhir/Endpoint", headers=bearer(token))
    assert response.status_code == 503 and response.get_json()["resourceType"] == "OperationOutcome"
