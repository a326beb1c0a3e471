"""JSON and XML (FHIR R4 http.html#mime-type): `_format` and `Accept` choose the format, with 406
for a format or a FHIR version not served; every kind of answer (reads, searches with includes,
history, operations, the CapabilityStatement, errors) is served in XML, and parsing the XML back
with the fhir.resources models gives the resource the JSON answer holds; an XML body is taken
where a JSON one is."""

from __future__ import annotations

import pytest
from fhir.resources.R4B import get_fhir_model_class

XML = "application/fhir+xml"


def _same_xhtml(node):
    """Narratives compared as XHTML, not as text: XML may write `ë` as `&#235;`."""
    from lxml import etree

    if isinstance(node, dict):
        return {
            k: (etree.tostring(etree.fromstring(v), method="c14n") if k == "div" else _same_xhtml(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_same_xhtml(item) for item in node]
    return node


def normal(resource: dict) -> dict:
    """A resource as the R4 models read it, without what differs between two answers (a Bundle's
    own id and time)."""
    model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    found = _same_xhtml(model.model_dump(mode="json", exclude_none=True))
    if found["resourceType"] == "Bundle":
        found.pop("id", None)
        found.pop("meta", None)
    return found


def from_xml(body: bytes) -> dict:
    from lxml import etree

    name = etree.QName(etree.fromstring(body)).localname
    return normal(get_fhir_model_class(name).model_validate_xml(body).model_dump(mode="json", exclude_none=True))


def both(client, method: str, url: str, **kwargs):
    """The JSON answer and the XML one (asked for with `_format`) to the same request."""
    as_json = getattr(client, method)(url, **kwargs)
    joiner = "&" if "?" in url else "?"
    as_xml = getattr(client, method)(f"{url}{joiner}_format=xml", **kwargs)
    return as_json, as_xml


def test_every_kind_of_answer_reads_back_from_xml_as_its_json(client):
    study = client.get("/fhir/ImagingStudy?_count=1").get_json()["entry"][0]["resource"]["id"]
    patient = client.get("/fhir/Patient?_count=1").get_json()["entry"][0]["resource"]["id"]
    urls = [
        "/fhir/metadata",
        f"/fhir/ImagingStudy/{study}",
        f"/fhir/Patient/{patient}",
        "/fhir/Endpoint/pacs",
        f"/fhir/ImagingStudy/{study}/_history/1",
        f"/fhir/ImagingStudy/{study}/_history",
        "/fhir/ImagingStudy?_include=ImagingStudy:subject&_include=ImagingStudy:endpoint&_count=50",
        "/fhir/Patient?_revinclude=ImagingStudy:patient",
        "/fhir/Patient/nobody",  # 404 OperationOutcome
        "/fhir/ImagingStudy?started=not-a-date",  # 400 OperationOutcome
        "/fhir/StructureDefinition/imaging-facade-imagingstudy",
    ]
    for url in urls:
        as_json, as_xml = both(client, "get", url)
        assert as_xml.status_code == as_json.status_code, url
        assert as_xml.mimetype == XML, url
        assert as_xml.data.startswith(b"<?xml"), url
        assert from_xml(as_xml.data) == normal(as_json.get_json()), url


def test_an_operation_answers_in_xml_and_takes_an_xml_body(client):
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "resource",
                "resource": {"resourceType": "Patient", "name": [{"family": "Müller"}], "birthDate": "1970-05-01"},
            }
        ],
    }
    as_json, as_xml = both(client, "post", "/fhir/Patient/$match", json=body)
    assert as_json.status_code == as_xml.status_code == 200
    assert from_xml(as_xml.data) == normal(as_json.get_json())
    xml_body = get_fhir_model_class("Parameters").model_validate(body).model_dump_xml()
    posted = client.post("/fhir/Patient/$match", data=xml_body, headers={"Content-Type": XML, "Accept": XML})
    assert posted.status_code == 200 and posted.mimetype == XML
    assert from_xml(posted.data) == from_xml(as_xml.data)


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"<Parameters xmlns='http://hl7.org/fhir'><parameter>", "not well-formed"),
        (b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><Parameters xmlns='http://hl7.org/fhir'/>", "DTD"),
        (b"<Parameters/>", "FHIR namespace"),
        (b"<Nonsense xmlns='http://hl7.org/fhir'/>", "not a FHIR resource"),
    ],
)
def test_a_bad_xml_body_gets_400_saying_why(client, body, problem):
    answer = client.post("/fhir/Patient/$match", data=body, headers={"Content-Type": XML})
    assert answer.status_code == 400
    assert problem in answer.get_json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "headers, query, expected",
    [
        ({}, "", "application/fhir+json"),
        ({"Accept": XML}, "", XML),
        ({"Accept": "application/xml"}, "", XML),
        ({"Accept": "application/fhir+xml;q=0.5, application/fhir+json"}, "", "application/fhir+json"),
        ({"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}, "", XML),  # a browser
        ({"Accept": "*/*"}, "", "application/fhir+json"),
        ({"Accept": "application/fhir+json; fhirVersion=4.0"}, "", "application/fhir+json"),
        ({"Accept": XML}, "_format=json", "application/fhir+json"),  # _format wins
        ({}, "_format=application/fhir%2Bxml", XML),
        ({}, "_format=application/fhir+xml", XML),  # an unencoded + is a space
    ],
)
def test_format_and_accept_choose(client, headers, query, expected):
    answer = client.get(f"/fhir/Endpoint/pacs?{query}", headers=headers)
    assert answer.status_code == 200
    assert answer.mimetype == expected


@pytest.mark.parametrize(
    "headers, query, named",
    [
        ({"Accept": "text/turtle"}, "", "Accept"),
        ({"Accept": "application/fhir+json; fhirVersion=3.0"}, "", "Accept"),
        ({"Accept": "application/fhir+xml; fhirVersion=5.0"}, "", "Accept"),
        ({}, "_format=ttl", "_format"),
        ({}, "_format=application/fhir%2Bjson;fhirVersion=1.0", "_format"),
    ],
)
def test_a_format_or_version_not_served_gets_406(client, headers, query, named):
    answer = client.get(f"/fhir/Endpoint/pacs?{query}", headers=headers)
    assert answer.status_code == 406
    assert named in answer.get_json()["issue"][0]["diagnostics"]
