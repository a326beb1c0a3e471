"""Type and system history under a patient-context token, on SQLite and PostgreSQL: only what
a search of each type would show comes back (FHIR R4 http 3.1.0.12 with SMART's compartment),
an older version only if its patient is in the compartment, no deletion of another patient's
resource, and paging links of one token are foreign to another. History needs the search
permission on each type it lists (SMART v2: `s` grants type and system history)."""

from __future__ import annotations

import pytest

from app.security.access import READ, ScopeGrant
from tests.support.access import (
    ALICE_ENDPOINTS,
    ALICE_PATIENTS,
    ALICE_STUDIES,
    _patient,
    _study,
    grant,
    patient_access,
    system_access,
)
from tests.support.bundles import next_link
from tests.support.leaks import outside


@pytest.fixture
def api(people_app):
    people_app.accesses.update(
        {
            "alice": patient_access("alice"),
            "bob": patient_access("bob", subject="user-2"),
            "alice-patients-only": patient_access("alice", grant("patient", "Patient")),
            "alice-read-only": patient_access("alice", ScopeGrant("patient", "*", frozenset({READ}))),
            "system": system_access(),
        }
    )
    client = people_app.test_client()

    def get(url, who="alice"):
        return client.get(url, headers={"X-Test-Access": who})

    get.store = people_app.extensions["imaging-facade"].store
    return get


def entries(api, url, who="alice") -> list[dict]:
    """Every entry over every page."""
    found = []
    while url:
        response = api(url, who)
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        assert body["type"] == "history"
        found += body.get("entry", [])
        url = next_link(body)
    return found


def keys(found: list[dict]) -> set[tuple[str, str]]:
    return {tuple(e["fullUrl"].split("/fhir/")[1].split("/")) for e in found}


ALICE_SEES = (
    {("Patient", p) for p in ALICE_PATIENTS}
    | {("ImagingStudy", s) for s in ALICE_STUDIES}
    | {("Endpoint", e) for e in ALICE_ENDPOINTS}
)


@pytest.mark.parametrize(
    "url, rtype",
    [
        ("/fhir/ImagingStudy/_history?_count=1", "ImagingStudy"),
        ("/fhir/Patient/_history?_count=1", "Patient"),
        ("/fhir/Endpoint/_history?_count=1", "Endpoint"),
        ("/fhir/_history?_count=2", None),
    ],
)
def test_history_shows_the_compartment_and_nothing_else(api, url, rtype):
    found = entries(api, url)
    leaked = [e for e in found if "resource" in e and outside(e["resource"])]
    assert leaked == []
    expected = {k for k in ALICE_SEES if rtype in (None, k[0])}
    assert keys(found) == expected, "every version listed is in the compartment, and all of it is reached"
    assert len(entries(api, url, "system")) > len(found), "a system token sees more"


def test_a_moved_study_shows_each_token_only_its_own_versions(api):
    store = api.store
    # the archive corrects study 1.1: it belongs to bob now (version 2)
    store.studies.put(_study("1.1", "bob", "MR"), _patient("bob", "222", "Baker"), "pacs")
    for who, shown in (("alice", set()), ("bob", {"2"})):
        for url in ("/fhir/ImagingStudy/_history", "/fhir/_history"):
            versions = {
                e["resource"]["meta"]["versionId"]
                for e in entries(api, url, who)
                if e["fullUrl"].endswith("/ImagingStudy/1.1")
            }
            assert versions == shown, (who, url)
    # bob's vread of alice's version is 404, as if it did not exist
    assert api("/fhir/ImagingStudy/1.1/_history/1", "bob").status_code == 404


def test_another_patients_deletion_stays_hidden(api):
    api.store.studies.remove("pacs", "2.1")  # bob's
    for url in ("/fhir/ImagingStudy/_history", "/fhir/_history"):
        assert ("ImagingStudy", "2.1") not in keys(entries(api, url, "alice"))
        deletions = [e for e in entries(api, url, "system") if e["request"]["method"] == "DELETE"]
        assert keys(deletions) == {("ImagingStudy", "2.1")}
    assert api("/fhir/ImagingStudy/2.1/_history", "alice").status_code == 404
    assert api("/fhir/ImagingStudy/2.1/_history/3", "alice").status_code == 404
    assert api("/fhir/ImagingStudy/2.1/_history/2", "system").status_code == 410


def test_a_deletion_inside_the_compartment_is_listed(api):
    store = api.store
    store.studies.remove("pacs", "1.2")  # alice's, then back: its history is hers again
    store.studies.put(_study("1.2", "alice", "CT"), _patient("alice", "111", "Anders"), "pacs")
    found = [e for e in entries(api, "/fhir/ImagingStudy/_history") if e["fullUrl"].endswith("/ImagingStudy/1.2")]
    assert [e["request"]["method"] for e in found] == ["PUT", "DELETE", "POST"]
    assert api("/fhir/ImagingStudy/1.2/_history/2").status_code == 410


@pytest.mark.parametrize("url", ["/fhir/ImagingStudy/_history?_count=1", "/fhir/_history?_count=1"])
def test_paging_links_are_the_tokens_own(api, url):
    link = next_link(api(url, "bob").get_json())
    assert link is not None
    path = link.split("/fhir", 1)[1]
    response = api(f"/fhir{path}", "alice")
    assert response.status_code == 400
    assert "'_page'" in response.get_json()["issue"][0]["diagnostics"]
    assert api(f"/fhir{path}", "bob").status_code == 200


def test_history_needs_the_search_permission_of_each_type(api):
    assert api("/fhir/ImagingStudy/_history", "alice-patients-only").status_code == 403
    found = entries(api, "/fhir/_history", "alice-patients-only")
    assert keys(found) == {("Patient", p) for p in ALICE_PATIENTS}
    assert api("/fhir/ImagingStudy/_history", "alice-read-only").status_code == 403
    assert api("/fhir/_history", "alice-read-only").status_code == 403
    assert api("/fhir/ImagingStudy/1.1/_history", "alice-read-only").status_code == 200  # instance history is a read
