"""The leak matrix of test_compartment.py, end to end: the same requests, each carrying a real
bearer token signed by the authorization server process (tests/security/smart_auth.py) and
checked by the server's token check, so the Access the compartment applies is the one the
token check built from the token's `patient` claim and scopes, not one a test installed.
"""
from __future__ import annotations

import pytest
from access_fixtures import ALICE_ENDPOINTS, ALICE_PATIENTS, ALICE_STUDIES, load
from conftest import security_config
from test_compartment import FOREIGN_READS, FORBIDDEN_SEARCHES, SEARCHES, all_pages, outside

from app.store.repository import Store
from app.web import create_app

CLAIMS = {
    "alice": {"scope": "patient/*.rs", "patient": "alice", "sub": "user-1"},
    "bob": {"scope": "patient/ImagingStudy.rs patient/Patient.rs patient/Endpoint.rs", "patient": "Patient/bob",
            "sub": "user-2"},
    "system": {"scope": "system/*.rs", "patient": None, "sub": "backend"},
}


@pytest.fixture
def api(store_url, write_config, auth_server):
    config = write_config({
        "store": store_url,
        "server": {"base_url": "http://testserver/fhir", "default_count": 2, "max_count": 50},
        "security": security_config(auth_server, audience="http://testserver/fhir"),
    })
    store = Store.from_config(config)
    load(store)
    client = create_app(config, store).test_client()
    tokens = {who: auth_server.sign(claims) for who, claims in CLAIMS.items()}

    def get(url, who="alice"):
        return client.get(url, headers={"Authorization": f"Bearer {tokens[who]}"})

    get.post = lambda url, data, who="alice": client.post(
        url, data=data, headers={"Authorization": f"Bearer {tokens[who]}"})
    yield get
    store.close()


def test_leak_matrix_with_real_tokens(api):
    leaks, reached = [], set()
    for url in FOREIGN_READS:
        response = api(url)
        if response.status_code != 404:
            leaks.append((url, response.status_code))
    for url in FORBIDDEN_SEARCHES:
        response = api(url)
        if response.status_code != 403 or response.get_json()["resourceType"] != "OperationOutcome":
            leaks.append((url, response.status_code))
    post = api.post("/fhir/ImagingStudy/_search", {"patient": "bob"})
    if post.status_code != 403:
        leaks.append(("POST patient=bob", post.status_code))
    for url in SEARCHES:
        for resource in all_pages(api, url):
            reached.add((resource["resourceType"], resource["id"]))
            if outside(resource):
                leaks.append((url, resource["resourceType"], resource["id"]))
    assert leaks == []
    assert {rid for kind, rid in reached if kind == "ImagingStudy"} == ALICE_STUDIES
    assert {rid for kind, rid in reached if kind == "Patient"} == ALICE_PATIENTS
    assert {rid for kind, rid in reached if kind == "Endpoint"} == ALICE_ENDPOINTS


def test_a_paging_link_does_not_work_with_another_token(api):
    first = api("/fhir/ImagingStudy?_count=1", "bob").get_json()
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert api(next_url.replace("http://testserver", ""), "alice").status_code == 400
    assert api(next_url.replace("http://testserver", ""), "bob").status_code == 200


def test_a_system_token_sees_every_patient(api):
    patients = {r["id"] for r in all_pages(api, "/fhir/Patient", "system")}
    assert patients == {"alice", "alice-b", "dora", "eve", "bob"}
