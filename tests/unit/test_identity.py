"""Patient keys (app.identity.keys): (system, value), never the value alone."""

from __future__ import annotations

import re

import pytest

from app.identity import patient_id, patient_id_for_study, patient_key
from app.identity.keys import MissingKey, decide_patient_id, legacy_patient_id, legacy_patient_id_for_study
from app.identity.settings import DEFAULT
from tests.support.keys import TEST_IDENTITY, TEST_KEY

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def test_patient_id_is_a_stable_valid_fhir_id():
    first = patient_id("urn:oid:1.2.3", "12345", TEST_KEY)
    assert first == patient_id("urn:oid:1.2.3", "12345", TEST_KEY)
    assert FHIR_ID.fullmatch(first)
    assert "12345" not in first  # the id does not reveal the Patient ID


def test_same_value_different_system_is_a_different_patient():
    assert patient_id("urn:oid:1.2.3", "12345", TEST_KEY) != patient_id("urn:oid:1.2.4", "12345", TEST_KEY)


def test_different_value_same_system_is_a_different_patient():
    assert patient_id("urn:oid:1.2.3", "12345", TEST_KEY) != patient_id("urn:oid:1.2.3", "12346", TEST_KEY)


def test_system_and_value_cannot_be_confused_across_the_boundary():
    assert patient_id("urn:a|b", "c", TEST_KEY) != patient_id("urn:a", "b|c", TEST_KEY)


def test_patient_of_a_study_never_collides_with_a_keyed_patient():
    study_uid = "1.2.3.4.5"
    own = patient_id_for_study(study_uid, TEST_KEY)
    assert FHIR_ID.fullmatch(own)
    assert own == patient_id_for_study(study_uid, TEST_KEY)
    assert own != patient_id_for_study("1.2.3.4.6", TEST_KEY)
    assert own != patient_id("study", study_uid, TEST_KEY) != patient_id("urn:x", study_uid, TEST_KEY)


@pytest.mark.parametrize("system, value", [("", "1"), ("urn:x", ""), (None, "1")])
def test_patient_id_needs_system_and_value(system, value):
    with pytest.raises(ValueError):
        patient_id(system, value, TEST_KEY)


def test_patient_key():
    keyed = {
        "resourceType": "Patient",
        "id": patient_id("urn:oid:1.2.3", "77", TEST_KEY),
        "identifier": [{"system": "urn:oid:1.2.3", "value": "77"}, {"system": "urn:oid:9.9", "value": "other"}],
    }
    assert patient_key(keyed, TEST_IDENTITY) == ("urn:oid:1.2.3", "77")
    assert patient_key(keyed) is None  # without the key no id can be told keyed
    own = {"resourceType": "Patient", "id": patient_id_for_study("1.2.3", TEST_KEY)}
    assert patient_key(own, TEST_IDENTITY) is None
    # an id that was not derived from the first identifier is not a key
    mismatched = dict(keyed, id=patient_id("urn:oid:9.9", "other", TEST_KEY))
    assert patient_key(mismatched, TEST_IDENTITY) is None
    assert patient_key({"id": "x", "identifier": [{"value": "77"}]}) is None


def test_an_id_depends_on_the_key_and_is_not_the_unkeyed_digest():
    """Issue: an unsalted digest of (system, value) is reversed by trying every Patient ID; under a
    key the attacker does not hold, neither the old digest nor another key's id matches."""
    other_key = b"another-deployment-key-0123456789"
    keyed = patient_id("urn:oid:1.2.3", "12345678", TEST_KEY)
    assert keyed != legacy_patient_id("urn:oid:1.2.3", "12345678")
    assert keyed != patient_id("urn:oid:1.2.3", "12345678", other_key)
    assert keyed[0] == legacy_patient_id("urn:oid:1.2.3", "12345678")[0] == "p"
    assert len(keyed) == len(legacy_patient_id("urn:oid:1.2.3", "12345678"))
    assert patient_id_for_study("1.2.3", TEST_KEY) != legacy_patient_id_for_study("1.2.3")


def test_mapping_refuses_to_make_an_id_without_the_key():
    with pytest.raises(MissingKey):
        decide_patient_id(("urn:oid:1.2.3", "1"), "1.2.3", DEFAULT)
    with pytest.raises(MissingKey):
        decide_patient_id(None, "1.2.3", DEFAULT)
    assert decide_patient_id(("urn:oid:1.2.3", "1"), "1.2.3", TEST_IDENTITY) == patient_id(
        "urn:oid:1.2.3", "1", TEST_KEY
    )
