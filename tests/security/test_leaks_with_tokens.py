"""The leak matrix of tests/support/leaks.py, end to end: the same requests, each carrying a real
bearer token signed by the authorization server process (tests/support/smart_auth.py) and
checked by the server's token check, so the Access the compartment applies is the one the
token check built from the token's `patient` claim and scopes, not one a test installed.
"""

from __future__ import annotations

import pytest

from app.store.repository import Store
from app.web import create_app
from tests.support.access import load
from tests.support.bundles import next_link
from tests.support.leaks import all_pages, assert_no_leak_and_all_reached
from tests.support.smart_auth import security_config

CLAIMS = {
    "alice": {"scope": "patient/*.rs", "patient": "alice", "sub": "user-1"},
    "bob": {
        "scope": "patient/ImagingStudy.rs patient/Patient.rs patient/Endpoint.rs",
        "patient": "Patient/bob",
        "sub": "user-2",
    },
    "system": {"scope": "system/*.rs", "patient": None, "sub": "backend"},
}


@pytest.fixture
def api(store_url, write_config, auth_server):
    config = write_config(
        {
            "store": store_url,
            "server": {"base_url": "http://testserver/fhir", "default_count": 2, "max_count": 50},
            "security": security_config(auth_server, audience="http://testserver/fhir"),
        }
    )
    store = Store.from_config(config)
    load(store)
    client = create_app(config, store).test_client()
    tokens = {who: auth_server.sign(claims) for who, claims in CLAIMS.items()}

    def get(url, who="alice"):
        return client.get(url, headers={"Authorization": f"Bearer {tokens[who]}"})

    get.post = lambda url, data, who="alice": client.post(
        url, data=data, headers={"Authorization": f"Bearer {tokens[who]}"}
    )
    yield get
    store.close()


def test_leak_matrix_with_real_tokens(api):
    assert_no_leak_and_all_reached(api)


def test_a_paging_link_does_not_work_with_another_token(api):
    first = api("/fhir/ImagingStudy?_count=1", "bob").get_json()
    assert api(next_link(first), "alice").status_code == 400
    assert api(next_link(first), "bob").status_code == 200


def test_a_system_token_sees_every_patient(api):
    patients = {r["id"] for r in all_pages(api, "/fhir/Patient", "system")}
    assert patients == {"alice", "alice-b", "dora", "eve", "bob"}
