"""Patient keys (app.identity.keys): (system, value), never the value alone."""

from __future__ import annotations

import re

import pytest

from app.identity import patient_id, patient_id_for_study, patient_key

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def test_patient_id_is_a_stable_valid_fhir_id():
    first = patient_id("urn:oid:1.2.3", "12345")
    assert first == patient_id("urn:oid:1.2.3", "12345")
    assert FHIR_ID.fullmatch(first)
    assert "12345" not in first  # the id does not reveal the Patient ID


def test_same_value_different_system_is_a_different_patient():
    assert patient_id("urn:oid:1.2.3", "12345") != patient_id("urn:oid:1.2.4", "12345")


def test_different_value_same_system_is_a_different_patient():
    assert patient_id("urn:oid:1.2.3", "12345") != patient_id("urn:oid:1.2.3", "12346")


def test_system_and_value_cannot_be_confused_across_the_boundary():
    assert patient_id("urn:a|b", "c") != patient_id("urn:a", "b|c")


def test_patient_of_a_study_never_collides_with_a_keyed_patient():
    study_uid = "1.2.3.4.5"
    own = patient_id_for_study(study_uid)
    assert FHIR_ID.fullmatch(own)
    assert own == patient_id_for_study(study_uid)
    assert own != patient_id_for_study("1.2.3.4.6")
    assert own != patient_id("study", study_uid) != patient_id("urn:x", study_uid)


@pytest.mark.parametrize("system, value", [("", "1"), ("urn:x", ""), (None, "1")])
def test_patient_id_needs_system_and_value(system, value):
    with pytest.raises(ValueError):
        patient_id(system, value)


def test_patient_key():
    keyed = {
        "resourceType": "Patient",
        "id": patient_id("urn:oid:1.2.3", "77"),
        "identifier": [{"system": "urn:oid:1.2.3", "value": "77"}, {"system": "urn:oid:9.9", "value": "other"}],
    }
    assert patient_key(keyed) == ("urn:oid:1.2.3", "77")
    own = {"resourceType": "Patient", "id": patient_id_for_study("1.2.3")}
    assert patient_key(own) is None
    # an id that was not derived from the first identifier is not a key
    mismatched = dict(keyed, id=patient_id("urn:oid:9.9", "other"))
    assert patient_key(mismatched) is None
    assert patient_key({"id": "x", "identifier": [{"value": "77"}]}) is None
