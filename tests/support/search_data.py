"""The small hand-written data set of the conformance tests (each expected answer can be derived
from the spec by reading the test), and helpers that read searchset Bundles."""

from __future__ import annotations

from app.store.repository import Store
from tests.support.bundles import next_link

DCM = "http://dicom.nema.org/resources/ontology/DCM"
BASE = "http://testserver/fhir"

STARTED = {  # study id -> started (second, day and year precision)
    "1.2.1": "2020-01-01T10:00:00+00:00",
    "1.2.2": "2020-01-02",
    "1.2.3": "2020",
}


def _patient(pid, family, given, gender, birth, mrn):
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": "urn:oid:1.2.3.4", "value": mrn}],
        "name": [{"family": family, "given": [given]}],
        "gender": gender,
        "birthDate": birth,
    }


def _study(uid, pid, modalities, started):
    return {
        "resourceType": "ImagingStudy",
        "id": uid,
        "status": "available",
        "identifier": [
            {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"},
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                "system": "urn:oid:9.9",
                "value": f"A{uid[-1]}",
            },
        ],
        "modality": [{"system": DCM, "code": m} for m in sorted(set(modalities))],
        "subject": {"reference": f"Patient/{pid}"},
        "started": started,
        "endpoint": [{"reference": "Endpoint/pacs"}],
        "series": [{"uid": f"{uid}.{i}", "modality": {"system": DCM, "code": m}} for i, m in enumerate(modalities)],
    }


ENDPOINT = {
    "resourceType": "Endpoint",
    "id": "pacs",
    "status": "active",
    "connectionType": {
        "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
        "code": "dicom-wado-rs",
    },
    "payloadType": [{"text": "DICOM WADO-RS"}],
    "address": "http://pacs/dicom-web",
}


def load(store: Store) -> None:
    """Two patients (accents and spellings that search must fold), three studies, one Endpoint."""
    store.resources.put(ENDPOINT)
    alice = _patient("alice", "Müller", "Zoë", "female", "1970-05-01", "111")
    bob = _patient("bob", "Mueller", "Bob", "male", "1980-02-29", "222")
    store.studies.put(_study("1.2.1", "alice", ["MR", "SR"], STARTED["1.2.1"]), alice, "pacs")
    store.studies.put(_study("1.2.2", "alice", ["CT"], STARTED["1.2.2"]), alice, "pacs")
    store.studies.put(_study("1.2.3", "bob", ["MR"], STARTED["1.2.3"]), bob, "pacs")


def ids(response, mode="match"):
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return sorted(e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == mode)


def all_pages(client, url):
    seen, pages = [], 0
    while url:
        body = client.get(url).get_json()
        seen += [e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "match"]
        assert body.get("entry") or pages == 0, "an empty page after a next link"
        url = next_link(body)
        pages += 1
    return seen, pages
