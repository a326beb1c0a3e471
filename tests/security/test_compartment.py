"""The patient compartment of a patient-context token, on SQLite and PostgreSQL.

A leak matrix: for a token whose patient is alice, every way of reaching another patient's
data (reads, versions, history, searches by patient or subject, chains, _has, includes and
revincludes with :iterate and *, Patient and Endpoint searches, paging links of another
token) is tried and each resource of another patient that comes back is counted; the count
must be 0. The same requests also have to reach everything alice may see (her record, the
records linked to it one hop either way, their studies and the Endpoint they point at), so
the test fails both when the compartment leaks and when it hides too much. Images through the
WADO-RS gateway are refused outside the compartment too: test_gateway.py, against a real Orthanc.
"""

from __future__ import annotations

import pytest

from tests.support.access import (
    ALICE_STUDIES,
    PEOPLE,
    STUDY_PATIENT,
    grant,
    patient_access,
    system_access,
)
from tests.support.bundles import next_link
from tests.support.leaks import all_pages, assert_no_leak_and_all_reached, outside, resources


@pytest.fixture
def api(people_app):
    people_app.accesses.update(
        {
            "alice": patient_access("alice"),
            "bob": patient_access("bob", subject="user-2"),
            "system": system_access(),
        }
    )
    client = people_app.test_client()

    def get(url, who="alice", **kwargs):
        return client.get(url, headers={"X-Test-Access": who, **kwargs.pop("headers", {})}, **kwargs)

    get.post = lambda url, data, who="alice": client.post(url, data=data, headers={"X-Test-Access": who})
    return get


def test_leak_matrix(api):
    assert_no_leak_and_all_reached(api)


@pytest.mark.parametrize(
    "url",
    [
        "/fhir/ImagingStudy/1.3",
        "/fhir/ImagingStudy/1.4/_history/1",
        "/fhir/ImagingStudy/1.1/_history",
        "/fhir/Patient/alice-b",
        "/fhir/Patient/dora",
        "/fhir/Endpoint/pacs",
    ],
)
def test_reads_inside_the_compartment(api, url):
    response = api(url)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert not [r for r in resources(response) if outside(r)]


def ids(response) -> set[str]:
    return {e["resource"]["id"] for e in response.get_json().get("entry", [])}


def test_implicit_restriction_and_totals(api):
    body = api("/fhir/ImagingStudy?_count=10").get_json()
    assert body["total"] == 4
    assert sorted(e["resource"]["id"] for e in body["entry"]) == sorted(ALICE_STUDIES)
    # patient= also finds the studies of the records linked to the named one (alice-b <-> alice)
    assert ids(api("/fhir/ImagingStudy?patient=alice-b&_count=10")) == {"1.1", "1.2", "1.3"}
    # dora is linked to alice and to eve; eve is outside alice's compartment and stays out
    assert ids(api("/fhir/ImagingStudy?patient=dora&_count=10")) == {"1.1", "1.2", "1.4"}
    assert "3.1" in ids(api("/fhir/ImagingStudy?patient=dora&_count=10", "system"))
    assert api("/fhir/ImagingStudy?_summary=count").get_json()["total"] == 4
    # without a compartment, the same search sees every study
    assert api("/fhir/ImagingStudy?_count=10", "system").get_json()["total"] == len(STUDY_PATIENT)


def test_two_hops_are_not_followed(api):
    """eve's record links to dora's, dora's to alice's: eve is two hops from alice."""
    assert api("/fhir/Patient/eve").status_code == 404
    assert api("/fhir/Patient/eve", "system").status_code == 200
    # nor does dora's record, which alice may read, name eve's to her
    assert linked(api("/fhir/Patient/dora").get_json()) == ["alice"]
    assert linked(api("/fhir/Patient/dora", "system").get_json()) == ["alice", "eve"]
    assert api("/fhir/Patient?link=eve").status_code == 403
    assert ids(api("/fhir/Patient?link=eve", "system")) == {"dora"}
    # nor may alice ask which records have links at all: it would count the ones trimmed away
    assert api("/fhir/Patient?link:missing=false").status_code == 403
    assert api("/fhir/Patient?link:missing=true").status_code == 403
    assert "dora" in ids(api("/fhir/Patient?link:missing=false&_count=50", "system"))


def linked(patient: dict) -> list[str]:
    return sorted(link["other"]["reference"].removeprefix("Patient/") for link in patient.get("link", []))


def test_forbidden_search_answers_403_before_any_data(api):
    response = api("/fhir/ImagingStudy?patient=bob")
    assert response.status_code == 403
    issue = response.get_json()["issue"][0]
    assert issue["code"] == "forbidden" and "bob" not in issue["diagnostics"]
    # a patient that does not exist at all is refused the same way: 403 tells nothing
    assert api("/fhir/ImagingStudy?patient=nobody").status_code == 403


def test_paging_links_are_bound_to_their_token(api):
    first = api("/fhir/ImagingStudy?_count=1", "bob").get_json()
    stolen = api(next_link(first), "alice")
    assert stolen.status_code == 400
    assert "_page" in stolen.get_json()["issue"][0]["diagnostics"]
    # the owner follows it, and alice's own links work across all her pages
    assert api(next_link(first), "bob").status_code == 200
    assert sorted(r["id"] for r in all_pages(api, "/fhir/ImagingStudy?_count=1")) == sorted(ALICE_STUDIES)


def test_scopes_are_checked_before_the_query(people_app):
    people_app.accesses["studies-only"] = patient_access("alice", grant("patient", "ImagingStudy"))
    client = people_app.test_client()
    headers = {"X-Test-Access": "studies-only"}
    assert client.get("/fhir/Patient/alice", headers=headers).status_code == 403
    assert client.get("/fhir/Patient?name=anders", headers=headers).status_code == 403
    body = client.get(
        "/fhir/ImagingStudy?_include=ImagingStudy:patient&_include=ImagingStudy:endpoint&_count=10", headers=headers
    ).get_json()
    kinds = {e["resource"]["resourceType"] for e in body["entry"]}
    # Patients are outside the token's scopes, even as includes; the Endpoints of its studies are not
    assert kinds == {"ImagingStudy", "Endpoint"}
    assert client.get("/fhir/Endpoint/pacs", headers=headers).status_code == 200


def test_no_access_at_all_sees_nothing(people_app):
    people_app.accesses["nothing"] = patient_access("alice", grant("patient", "Observation"))
    client = people_app.test_client()
    assert client.get("/fhir/ImagingStudy", headers={"X-Test-Access": "nothing"}).status_code == 403
    assert client.get("/fhir/ImagingStudy/1.1", headers={"X-Test-Access": "nothing"}).status_code == 403


def test_every_patient_sees_only_their_own(people_app):
    """Each patient-context token in turn: what it reaches is exactly its compartment."""
    client = people_app.test_client()
    links = {pid: set(v[2]) for pid, v in PEOPLE.items()}
    for pid in PEOPLE:
        people_app.accesses[pid] = patient_access(pid)
        mine = {pid} | links[pid] | {other for other, targets in links.items() if pid in targets}
        body = client.get(
            "/fhir/ImagingStudy?_count=50&_include=ImagingStudy:patient", headers={"X-Test-Access": pid}
        ).get_json()
        returned = [e["resource"] for e in body.get("entry", [])]
        studies = {r["id"] for r in returned if r["resourceType"] == "ImagingStudy"}
        patients = {r["id"] for r in returned if r["resourceType"] == "Patient"}
        assert studies == {uid for uid, owner in STUDY_PATIENT.items() if owner in mine}, pid
        assert patients == mine, pid


@pytest.mark.parametrize(
    "url, for_system",
    [
        ("/fhir/Endpoint?_has:ImagingStudy:endpoint:patient=bob", ["bob-pacs", "pacs"]),
        ("/fhir/Endpoint?_has:ImagingStudy:endpoint:patient.identifier=222", ["bob-pacs", "pacs"]),
        ("/fhir/Endpoint?_has:ImagingStudy:endpoint:subject.family=evans", ["pacs"]),
    ],
)
def test_chains_do_not_reveal_whether_other_patients_data_exist(api, url, for_system):
    """The visible Endpoint `pacs` also holds bob's and eve's studies: a reverse chain that
    looks at those must not find it, or it would tell that they exist."""
    assert all_pages(api, url) == []
    assert sorted(r["id"] for r in all_pages(api, url, "system")) == for_system
