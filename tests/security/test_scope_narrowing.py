"""SMART v2 granular scopes (`patient/ImagingStudy.rs?modality=MR`), on SQLite and PostgreSQL.

A narrowed scope acts as if its parameters were added to every search of its type (ANDed);
several scopes of one type are ORed; an unnarrowed scope of the type lifts the narrowing.
Reads, chains and includes honour it as searches do. Data: see conftest (alice has MR 1.1
and CT 1.2, alice-b CT 1.3, dora US 1.4, bob MR 2.1 and CT 2.2, eve MR 3.1).
"""

from __future__ import annotations

import pytest

from tests.support.access import grant, patient_access, system_access
from tests.support.bundles import next_link


def _ids(response, kind="ImagingStudy"):
    assert response.status_code == 200, response.get_data(as_text=True)
    return sorted(
        e["resource"]["id"] for e in response.get_json().get("entry", []) if e["resource"]["resourceType"] == kind
    )


ACCESSES = {
    "alice-mr": patient_access(
        "alice", grant("patient", "ImagingStudy", ("modality", "MR")), grant("patient", "Patient")
    ),
    "alice-mr-or-us": patient_access(
        "alice",
        grant("patient", "ImagingStudy", ("modality", "MR")),
        grant("patient", "ImagingStudy", ("modality", "US")),
        grant("patient", "Patient"),
    ),
    "alice-mr-and-unnarrowed": patient_access(
        "alice", grant("patient", "ImagingStudy", ("modality", "MR")), grant("patient", "ImagingStudy")
    ),
    "user-ct": system_access(grant("user", "ImagingStudy", ("modality", "CT")), grant("user", "Patient")),
    "user-ct-of-alice": system_access(grant("user", "ImagingStudy", ("modality", "CT"), ("patient", "alice"))),
    "unusable": system_access(grant("user", "ImagingStudy", ("colour", "blue"))),
    # each type's scope chains into the other's: applied once, not in an endless loop
    "chained": patient_access(
        "alice",
        grant("patient", "ImagingStudy", ("patient.family", "anders")),
        grant("patient", "Patient", ("_has:ImagingStudy:patient:modality", "MR")),
    ),
}


@pytest.fixture
def api(people_app):
    people_app.accesses.update(ACCESSES)
    client = people_app.test_client()
    return lambda url, who: client.get(url, headers={"X-Test-Access": who})


@pytest.mark.parametrize(
    "who, url, expected",
    [
        ("alice-mr", "/fhir/ImagingStudy?_count=50", ["1.1"]),
        ("alice-mr", "/fhir/ImagingStudy?modality=CT&_count=50", []),  # ANDed: CT and MR
        ("alice-mr-or-us", "/fhir/ImagingStudy?_count=50", ["1.1", "1.4"]),  # ORed across scopes
        ("alice-mr-or-us", "/fhir/ImagingStudy?modality=US,CT&_count=50", ["1.4"]),
        ("alice-mr-and-unnarrowed", "/fhir/ImagingStudy?_count=50", ["1.1", "1.2", "1.3", "1.4"]),
        ("user-ct", "/fhir/ImagingStudy?_count=50", ["1.2", "1.3", "2.2"]),  # no compartment, only CT
        ("user-ct", "/fhir/ImagingStudy?patient=bob&_count=50", ["2.2"]),
        # a scope's parameters are ANDed; patient=alice also covers the record linked to hers (alice-b)
        ("user-ct-of-alice", "/fhir/ImagingStudy?_count=50", ["1.2", "1.3"]),
        ("unusable", "/fhir/ImagingStudy?_count=50", None),  # a scope that cannot apply grants nothing
        ("chained", "/fhir/ImagingStudy?_count=50", ["1.1", "1.2", "1.3", "1.4"]),
    ],
)
def test_search_is_narrowed(api, who, url, expected):
    response = api(url, who)
    if expected is None:
        assert response.status_code == 403
    else:
        assert _ids(response) == expected


def test_scopes_chaining_into_each_other(api):
    assert _ids(api("/fhir/Patient?_count=50", "chained"), "Patient") == ["alice"]  # the only one with an MR
    response = api("/fhir/Patient?_revinclude=ImagingStudy:patient&_count=50", "chained")
    assert _ids(response, "Patient") == ["alice"] and _ids(response) == ["1.1", "1.2"]


def test_narrowing_counts_and_pages(api):
    body = api("/fhir/ImagingStudy?_count=1", "user-ct").get_json()
    assert body["total"] == 3
    seen, url = [], "/fhir/ImagingStudy?_count=1"
    while url:
        body = api(url, "user-ct").get_json()
        seen += [e["resource"]["id"] for e in body["entry"]]
        url = next_link(body)
    assert seen == ["1.2", "1.3", "2.2"]


def test_reads_are_narrowed(api):
    assert api("/fhir/ImagingStudy/1.1", "alice-mr").status_code == 200
    assert api("/fhir/ImagingStudy/1.2", "alice-mr").status_code == 404
    assert api("/fhir/ImagingStudy/1.2/_history/1", "alice-mr").status_code == 404
    assert api("/fhir/ImagingStudy/2.1", "user-ct").status_code == 404
    assert api("/fhir/ImagingStudy/2.2", "user-ct").status_code == 200


def test_includes_and_chains_are_narrowed(api):
    response = api("/fhir/Patient?_id=alice&_revinclude=ImagingStudy:patient", "alice-mr")
    assert _ids(response) == ["1.1"]
    assert _ids(response, "Patient") == ["alice"]
    # a reverse chain only looks at studies the scope covers: alice has a CT, but not one this token sees
    assert _ids(api("/fhir/Patient?_has:ImagingStudy:patient:modality=CT", "alice-mr"), "Patient") == []
    assert _ids(api("/fhir/Patient?_has:ImagingStudy:patient:modality=MR", "alice-mr"), "Patient") == ["alice"]
    # Endpoints follow the studies a narrowed token sees
    assert _ids(api("/fhir/Endpoint", "alice-mr"), "Endpoint") == ["pacs"]
