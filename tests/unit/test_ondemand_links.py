"""On-demand fetching asks the archives for a searched patient's linked records too, since
`ImagingStudy?patient=` returns their studies as well."""

from __future__ import annotations

from app.search.query import parse_search
from app.sync.ondemand import searched_identifiers

PATIENTS = {
    "pa": {
        "resourceType": "Patient",
        "id": "pa",
        "identifier": [{"system": "urn:a", "value": "1"}],
        "link": [
            {"other": {"reference": "Patient/pb"}, "type": "seealso"},
            {"other": {"reference": "RelatedPerson/r1"}, "type": "seealso"},
        ],
    },
    "pb": {
        "resourceType": "Patient",
        "id": "pb",
        "identifier": [{"system": "urn:b", "value": "X7"}],
        "link": [{"other": {"reference": "Patient/pa"}, "type": "seealso"}],
    },
    "pc": {"resourceType": "Patient", "id": "pc", "identifier": [{"system": "urn:c", "value": "9"}]},
}


def identifiers(query: str) -> list[tuple[str, str]]:
    items = [tuple(part.split("=", 1)) for part in query.split("&")]
    parsed = parse_search(
        "ImagingStudy", items, zone="UTC", base_url="http://x/fhir", default_count=10, max_count=100, strict=True
    )
    return searched_identifiers(parsed, PATIENTS.get)


def test_linked_records_are_fetched_too():
    assert identifiers("patient=pa") == [("urn:a", "1"), ("urn:b", "X7")]
    assert identifiers("subject=Patient/pb") == [("urn:b", "X7"), ("urn:a", "1")]


def test_unlinked_patient_is_fetched_alone():
    assert identifiers("patient=pc") == [("urn:c", "9")]
