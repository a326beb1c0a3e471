"""The topics' filters (backport-filter-criteria strings, Subscriptions R5 Backport IG v1.1.0) and
what a study change is for them: a series added, status or patient changed is `changed`,
anything else is no event."""

from __future__ import annotations

import pytest

from app.fhir.topics import FilterError, parse_filter
from app.store.study_events import AVAILABLE, CHANGED, REMOVED, filter_keys, kind_of

STUDY = {
    "resourceType": "ImagingStudy",
    "id": "1.2.3",
    "status": "available",
    "subject": {"reference": "Patient/p1"},
    "identifier": [{"system": "urn:oid:1.2.9", "value": "ACC-7"}],
    "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "MR"}],
    "endpoint": [{"reference": "Endpoint/pacs"}],
    "series": [{"uid": "1.2.3.1", "modality": {"code": "SR"}}],
    "description": "head",
}


def test_filters_parse_to_names_and_ids():
    assert parse_filter("ImagingStudy?patient=Patient/p1&modality=MR") == [("patient", "p1"), ("modality", "MR")]
    assert parse_filter("ImagingStudy?endpoint=pacs") == [("endpoint", "pacs")]
    assert parse_filter("ImagingStudy?identifier=urn:oid:1.2.9|ACC-7") == [("identifier", "urn:oid:1.2.9|ACC-7")]


@pytest.mark.parametrize(
    "text, named",
    [
        ("Patient?name=x", "ImagingStudy?name=value"),
        ("ImagingStudy", "ImagingStudy?name=value"),
        ("ImagingStudy?", "names no filter"),
        ("ImagingStudy?started=2024", "'started'"),
        ("ImagingStudy?patient=", "no value"),
        ("ImagingStudy?patient=Group/1", "Patient"),
        ("ImagingStudy?endpoint=Endpoint/a/b", "Endpoint"),
    ],
)
def test_filters_this_server_does_not_take_are_named(text, named):
    with pytest.raises(FilterError) as refused:
        parse_filter(text)
    assert named in str(refused.value)


def test_what_a_change_is():
    assert kind_of(None, STUDY) == AVAILABLE
    assert kind_of(STUDY, None) == REMOVED
    assert kind_of(None, None) is None
    assert kind_of(STUDY, {**STUDY, "description": "knee"}) is None
    assert kind_of(STUDY, {**STUDY, "series": [*STUDY["series"], {"uid": "1.2.3.2"}]}) == CHANGED
    assert kind_of(STUDY, {**STUDY, "series": []}) is None  # a series gone is no topic event
    assert kind_of(STUDY, {**STUDY, "status": "cancelled"}) == CHANGED
    assert kind_of(STUDY, {**STUDY, "subject": {"reference": "Patient/p2"}}) == CHANGED


def test_what_filters_match_on():
    keys = filter_keys(STUDY)
    assert keys["patient"] == ["p1"]
    assert set(keys["identifier"]) == {"ACC-7", "urn:oid:1.2.9|ACC-7"}
    assert set(keys["modality"]) >= {"MR", "http://dicom.nema.org/resources/ontology/DCM|MR", "SR"}
    assert keys["endpoint"] == ["pacs"]
