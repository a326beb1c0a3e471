"""Fixtures for the data side of SMART-on-FHIR security, imported by the test modules: a store
of several patients (some linked) and a way to answer a request as a given `Access`.

The token check that builds an Access from a bearer token is covered by the token tests of
its own part; here each request carries the name of an Access the test built itself
(header `X-Test-Access`), installed by a `before_request` hook that exists in tests only, so
the compartment, scope narrowing and audit are tested against exactly the Access they get.
"""

from __future__ import annotations

from flask import request

from app.identity import review
from app.identity.settings import DEFAULT as DEFAULT_RULES
from app.security.access import Access, ScopeGrant, set_access
from app.store.repository import Store

DCM = "http://dicom.nema.org/resources/ontology/DCM"
RS = frozenset("rs")


def grant(context: str, resource: str, *narrowing: tuple[str, str]) -> ScopeGrant:
    return ScopeGrant(context, resource, RS, tuple(narrowing))


def patient_access(patient: str, *grants: ScopeGrant, subject: str = "user-1", client_id: str = "viewer") -> Access:
    grants = grants or (grant("patient", "*"),)
    scopes = tuple(f"{g.context}/{g.resource}.rs" for g in grants)
    return Access(open=False, subject=subject, client_id=client_id, scopes=scopes, grants=grants, patient=patient)


def system_access(*grants: ScopeGrant, client_id: str = "backend") -> Access:
    grants = grants or (grant("system", "*"),)
    scopes = tuple(f"{g.context}/{g.resource}.rs" for g in grants)
    return Access(open=False, client_id=client_id, scopes=scopes, grants=grants)


def install_accesses(app, accesses: dict[str, Access]) -> None:
    """Answer a request carrying `X-Test-Access: <name>` as that Access (tests only)."""

    @app.before_request
    def _test_access():
        name = request.headers.get("X-Test-Access")
        if name is not None:
            set_access(accesses[name])


def _patient(pid: str, mrn: str, family: str, links: tuple[str, ...] = ()) -> dict:
    body = {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": "urn:oid:1.2.3.4", "value": mrn}],
        "name": [{"family": family}],
        "gender": "unknown",
    }
    if links:
        body["link"] = [{"other": {"reference": f"Patient/{other}"}, "type": "seealso"} for other in links]
    return body


def _study(uid: str, pid: str, modality: str, endpoints: tuple[str, ...] = ("pacs",)) -> dict:
    return {
        "resourceType": "ImagingStudy",
        "id": uid,
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "modality": [{"system": DCM, "code": modality}],
        "subject": {"reference": f"Patient/{pid}"},
        "started": "2020-01-01",
        "endpoint": [{"reference": f"Endpoint/{e}"} for e in endpoints],
        "series": [{"uid": f"{uid}.1", "modality": {"system": DCM, "code": modality}}],
    }


def _endpoint(eid: str) -> dict:
    return {
        "resourceType": "Endpoint",
        "id": eid,
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "payloadType": [{"text": "DICOM WADO-RS"}],
        "address": f"http://{eid}/dicom-web",
    }


#: patient -> (MRN, family, links, studies as (uid, modality, endpoints))
PEOPLE = {
    # alice's record links to alice-b; dora's links to alice; eve's links to dora (two hops from alice)
    "alice": ("111", "Anders", ("alice-b",), [("1.1", "MR", ("pacs",)), ("1.2", "CT", ("pacs",))]),
    "alice-b": ("112", "Anders", (), [("1.3", "CT", ("pacs",))]),
    "dora": ("113", "Anders", ("alice",), [("1.4", "US", ("pacs",))]),
    "eve": ("300", "Evans", ("dora",), [("3.1", "MR", ("pacs",))]),
    "bob": ("222", "Baker", (), [("2.1", "MR", ("pacs",)), ("2.2", "CT", ("pacs", "bob-pacs"))]),
}
#: what a token for alice may see: her record, the records linked one hop either way
ALICE_PATIENTS = {"alice", "alice-b", "dora"}
ALICE_STUDIES = {"1.1", "1.2", "1.3", "1.4"}
ALICE_ENDPOINTS = {"pacs"}
STUDY_PATIENT = {uid: pid for pid, (_, _, _, studies) in PEOPLE.items() for uid, _, _ in studies}


def load(store: Store) -> None:
    """The data set, with its links made as an administrator makes them (identity review), so
    both records of each pair carry Patient.link, as they do in a real store."""
    for eid in ("pacs", "bob-pacs"):
        store.resources.put(_endpoint(eid))
    for pid, (mrn, family, _, studies) in PEOPLE.items():
        for uid, modality, endpoints in studies:
            store.studies.put(_study(uid, pid, modality, endpoints), _patient(pid, mrn, family), "pacs")
    for pid, (_, _, links, _) in PEOPLE.items():
        for other in links:
            review.link(store, pid, other, DEFAULT_RULES)
