"""A Patient keyed by its identifier and a study of it: the smallest records identity links,
for tests that put them in a store directly."""

from __future__ import annotations

from app.identity.keys import patient_id
from tests.support.keys import TEST_KEY


def person(system: str, value: str, family: str, given: str, birth: str | None, gender: str) -> dict:
    """A Patient with the id identity gives its identifier; `birth` None stays None (a caller
    putting it in a store drops the empty values)."""
    return {
        "resourceType": "Patient",
        "id": patient_id(system, value, TEST_KEY),
        "identifier": [{"system": system, "value": value}],
        "name": [{"family": family, "given": [given]}],
        "birthDate": birth,
        "gender": gender,
    }


def study(uid: str, patient: dict) -> dict:
    return {
        "resourceType": "ImagingStudy",
        "id": uid,
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "subject": {"reference": f"Patient/{patient['id']}"},
    }


def stored(patient: dict) -> dict:
    """The Patient as a store takes it: without the values it does not have."""
    return {k: v for k, v in patient.items() if v is not None}
