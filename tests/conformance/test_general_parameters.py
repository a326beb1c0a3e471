"""The general parameters `_format`, `_pretty`, `_summary` and `_elements` (FHIR R4 http.html
3.1.0.1.10, search.html 3.1.1.5) pass wherever they apply, also under `Prefer: handling=strict`,
which refuses only parameters the server does not know (issue 16, point 14)."""

from __future__ import annotations

import orjson
import pytest

STRICT = {"Prefer": "handling=strict"}
GENERAL = "_format=json&_pretty=true"

URLS = [
    f"/fhir/ImagingStudy?{GENERAL}",
    f"/fhir/ImagingStudy?modality=MR&_summary=true&{GENERAL}",
    f"/fhir/ImagingStudy?_elements=status,subject&{GENERAL}",
    f"/fhir/Patient?_summary=count&{GENERAL}",
    "/fhir/Endpoint?_pretty=false",
    f"/fhir/AuditEvent?{GENERAL}",
    f"/fhir/ImagingStudy/1.2.1?_summary=true&{GENERAL}",
    f"/fhir/ImagingStudy/1.2.1?_elements=status&{GENERAL}",
    f"/fhir/ImagingStudy/1.2.1/_history/1?{GENERAL}",
    f"/fhir/ImagingStudy/1.2.1/_history?{GENERAL}",
    f"/fhir/metadata?{GENERAL}",
]


@pytest.mark.parametrize("url", URLS)
def test_general_parameters_pass_under_strict_handling(client, url):
    response = client.get(url, headers=STRICT)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.get_json()["resourceType"] in ("Bundle", "ImagingStudy", "CapabilityStatement")


def test_post_search_takes_them_in_the_body(client):
    response = client.post(
        "/fhir/ImagingStudy/_search",
        data={"modality": "MR", "_pretty": "true", "_format": "json", "_summary": "true"},
        headers=STRICT,
    )
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.get_json()["total"] == 2


def test_pretty_indents_and_changes_nothing_else(client):
    plain = client.get("/fhir/ImagingStudy?modality=MR")
    pretty = client.get("/fhir/ImagingStudy?modality=MR&_pretty=true")
    assert b"\n  " in pretty.get_data() and b"\n" not in plain.get_data()
    left, right = orjson.loads(plain.get_data()), orjson.loads(pretty.get_data())
    left.pop("id"), right.pop("id")
    left["meta"].pop("lastUpdated"), right["meta"].pop("lastUpdated")
    assert left == right  # _pretty is presentation: not in the self link either
    read = client.get("/fhir/ImagingStudy/1.2.1?_pretty=true")
    assert orjson.loads(read.get_data()) == client.get("/fhir/ImagingStudy/1.2.1").get_json()
    assert b"\n  " in read.get_data()
    assert b"\n" not in client.get("/fhir/ImagingStudy/1.2.1?_pretty=false").get_data()


@pytest.mark.parametrize("url", ["/fhir/ImagingStudy?_pretty=yes", "/fhir/ImagingStudy/1.2.1?_pretty=1"])
def test_a_pretty_that_is_not_a_boolean_is_400(client, url):
    response = client.get(url)
    assert response.status_code == 400
    assert "'_pretty'" in response.get_json()["issue"][0]["diagnostics"]


def test_unknown_parameters_are_still_refused_under_strict_handling(client):
    response = client.get("/fhir/ImagingStudy?_pretty=true&colour=red", headers=STRICT)
    assert response.status_code == 400
    assert "colour" in response.get_json()["issue"][0]["diagnostics"]
