"""The leak matrix of a patient-context token whose patient is alice: every way of reaching another
patient's data, each tried, and what came back counted (tests/security/test_compartment.py runs
it with test accesses, test_leaks_with_tokens.py with real tokens)."""

from __future__ import annotations

from tests.support.access import ALICE_ENDPOINTS, ALICE_PATIENTS, ALICE_STUDIES
from tests.support.bundles import next_link


def resources(response) -> list[dict]:
    body = response.get_json()
    if body.get("resourceType") == "Bundle":
        return [e["resource"] for e in body.get("entry", [])]
    return [body] if body.get("resourceType") in ("ImagingStudy", "Patient", "Endpoint") else []


def outside(resource: dict) -> bool:
    """Whether a returned resource lies outside alice's compartment."""
    kind, rid = resource["resourceType"], resource["id"]
    if kind == "Patient":
        return rid not in ALICE_PATIENTS
    if kind == "ImagingStudy":
        return resource["subject"]["reference"].removeprefix("Patient/") not in ALICE_PATIENTS
    return rid not in ALICE_ENDPOINTS


def links_outside(resource: dict) -> list[str]:
    """The Patients outside alice's compartment a returned Patient names in its Patient.link:
    a link from a record in it (dora) to one two hops away (eve) tells that eve exists and is
    the same person."""
    if resource["resourceType"] != "Patient":
        return []
    named = [link["other"]["reference"].removeprefix("Patient/") for link in resource.get("link", [])]
    return [pid for pid in named if pid not in ALICE_PATIENTS]


def all_pages(api, url, who="alice"):
    found = []
    while url:
        response = api(url, who)
        assert response.status_code == 200, response.get_data(as_text=True)
        found += resources(response)
        url = next_link(response.get_json())
    return found


FOREIGN_READS = [
    "/fhir/ImagingStudy/2.1",
    "/fhir/ImagingStudy/2.1/_history/1",
    "/fhir/ImagingStudy/2.1/_history",
    "/fhir/ImagingStudy/3.1",
    "/fhir/Patient/bob",
    "/fhir/Patient/bob/_history/1",
    "/fhir/Patient/bob/_history",
    "/fhir/Patient/eve",
    "/fhir/Endpoint/bob-pacs",
    "/fhir/Endpoint/bob-pacs/_history",
]
FORBIDDEN_SEARCHES = [  # naming another patient explicitly: 403 (SMART Imaging Access)
    "/fhir/ImagingStudy?patient=bob",
    "/fhir/ImagingStudy?patient=Patient/bob",
    "/fhir/ImagingStudy?patient=http://testserver/fhir/Patient/bob",
    "/fhir/ImagingStudy?subject=Patient/eve",
    "/fhir/ImagingStudy?patient=alice,bob",
    "/fhir/ImagingStudy?subject:Patient=bob",
    "/fhir/ImagingStudy?patient._id=bob",
    "/fhir/Patient?_id=bob",
    "/fhir/Patient?_id=alice,eve",
    # whether a record has links at all would count those trimmed away from it
    "/fhir/Patient?link:missing=false",
    "/fhir/Patient?link:missing=true",
    # the link parameter names a patient too: which record links to eve is eve's business
    "/fhir/Patient?link=eve",
    "/fhir/Patient?link=Patient/bob",
    "/fhir/ImagingStudy?patient.link=bob",
    "/fhir/ImagingStudy?subject:Patient.link=eve",
]
OWN_READS = [  # inside the compartment: served, with their links kept inside it too
    "/fhir/Patient/dora",
    "/fhir/Patient/dora/_history",
    "/fhir/Patient/dora/_history/1",
    "/fhir/Patient/dora/_history/2",
    "/fhir/Patient/dora/_history/3",
    "/fhir/Patient/alice",
]
SEARCHES = [  # every other way in: only alice's compartment may come back
    "/fhir/ImagingStudy",
    "/fhir/ImagingStudy?modality=MR",
    "/fhir/ImagingStudy?patient:missing=false",
    "/fhir/ImagingStudy?patient.identifier=222",
    "/fhir/ImagingStudy?patient.identifier=urn:oid:1.2.3.4|300",
    "/fhir/ImagingStudy?patient.name=baker",
    "/fhir/ImagingStudy?subject:Patient.family=evans",
    "/fhir/ImagingStudy?endpoint=bob-pacs",
    "/fhir/ImagingStudy?endpoint.status=active",
    "/fhir/ImagingStudy?patient._has:ImagingStudy:patient:modality=MR",
    "/fhir/Patient",
    "/fhir/Patient?name=baker",
    "/fhir/Patient?identifier=222",
    "/fhir/Patient?_id:not=alice",
    "/fhir/Patient?link=dora",
    "/fhir/Patient?link:Patient.name=evans",
    "/fhir/Patient?_has:Patient:link:_id=eve",
    "/fhir/Patient?_has:Patient:link:name=evans",
    "/fhir/Patient?_include=Patient:link",
    "/fhir/Patient?_id=alice&_include=Patient:link&_include:iterate=Patient:link",
    "/fhir/Patient?_id=alice&_revinclude=Patient:link&_revinclude:iterate=Patient:link",
    "/fhir/Patient?_elements=link",
    "/fhir/Patient?_summary=true",
    "/fhir/Patient?_has:ImagingStudy:patient:modality=MR",
    "/fhir/Patient?_has:ImagingStudy:patient:endpoint=bob-pacs",
    "/fhir/Endpoint",
    "/fhir/Endpoint?_has:ImagingStudy:endpoint:modality=CT",
    "/fhir/Endpoint?_has:ImagingStudy:endpoint:patient=bob",
    "/fhir/ImagingStudy?_include=ImagingStudy:patient",
    "/fhir/ImagingStudy?_include=ImagingStudy:endpoint",
    "/fhir/ImagingStudy?_include=ImagingStudy:endpoint&_revinclude:iterate=ImagingStudy:endpoint",
    "/fhir/ImagingStudy?_include=ImagingStudy:patient&_include:iterate=Patient:link"
    "&_revinclude:iterate=ImagingStudy:patient",
    "/fhir/ImagingStudy?_include=*&_revinclude:iterate=*&_include:iterate=*",
    "/fhir/Patient?_revinclude=ImagingStudy:patient",
    "/fhir/Patient?_revinclude=*&_include:iterate=*",
    "/fhir/Patient?_revinclude=ImagingStudy:patient&_include:iterate=ImagingStudy:endpoint"
    "&_revinclude:iterate=ImagingStudy:endpoint",
    "/fhir/Endpoint?_revinclude=ImagingStudy:endpoint&_include:iterate=ImagingStudy:patient",
    "/fhir/Endpoint?_revinclude=*&_include:iterate=*&_revinclude:iterate=*",
    # type and system history, with every older version (a record's links as they were too)
    "/fhir/Patient/_history?_count=100",
    "/fhir/ImagingStudy/_history?_count=100",
    "/fhir/_history?_count=100",
]


def leak_matrix(api) -> tuple[list, set]:
    """Try every way in as alice: (the leaks found, the (type, id) of everything reached)."""
    leaks, reached = [], set()
    for url in OWN_READS:
        response = api(url)
        if response.status_code != 200:
            leaks.append((url, response.status_code))
        for resource in resources(response):
            leaks.extend((url, "Patient.link", resource["id"], other) for other in links_outside(resource))
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
            leaks.extend((url, "Patient.link", resource["id"], other) for other in links_outside(resource))
    return leaks, reached


def assert_no_leak_and_all_reached(api) -> None:
    leaks, reached = leak_matrix(api)
    assert leaks == [], leaks
    # and what alice may see is reachable through the same requests
    assert {rid for kind, rid in reached if kind == "ImagingStudy"} == ALICE_STUDIES
    assert {rid for kind, rid in reached if kind == "Patient"} == ALICE_PATIENTS
    assert {rid for kind, rid in reached if kind == "Endpoint"} == ALICE_ENDPOINTS
