"""FHIR R4 search semantics the server must get right, on SQLite and on PostgreSQL.

The data are small hand-written R4 resources so each expected answer can be derived from
the spec by reading the test; mapping of real DICOM is tested elsewhere.
"""

from __future__ import annotations

import pytest

from tests.support.bundles import next_link
from tests.support.search_data import BASE, DCM, all_pages, ids


@pytest.mark.parametrize("value", ["alice", "Patient/alice", f"{BASE}/Patient/alice"])
def test_patient_reference_forms_agree(client, value):
    assert ids(client.get(f"/fhir/ImagingStudy?patient={value}&_count=10")) == ["1.2.1", "1.2.2"]
    assert ids(client.get(f"/fhir/ImagingStudy?subject={value}&_count=10")) == ["1.2.1", "1.2.2"]


def test_reference_to_wrong_type_is_400_naming_parameter(client):
    response = client.get("/fhir/ImagingStudy?patient=Device/alice")
    assert response.status_code == 400
    assert "patient" in response.get_json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("urn:dicom:uid|urn:oid:1.2.2", ["1.2.2"]),
        ("urn:oid:1.2.2", ["1.2.2"]),
        ("urn:oid:9.9|A3", ["1.2.3"]),
        ("A3", ["1.2.3"]),
        ("|A3", []),  # |code means "no system", and the accession has one
        ("urn:oid:1.2.1,urn:oid:1.2.3", ["1.2.1", "1.2.3"]),
        ("urn:other|urn:oid:1.2.2", []),
    ],
)
def test_identifier_token_forms(client, value, expected):
    assert ids(client.get(f"/fhir/ImagingStudy?identifier={value}&_count=10")) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        ("MR", ["1.2.1", "1.2.3"]),  # series modality, as R4 defines the parameter
        ("SR", ["1.2.1"]),
        (f"{DCM}|CT", ["1.2.2"]),
        ("CT,SR", ["1.2.1", "1.2.2"]),
        ("http://other|MR", []),
    ],
)
def test_modality_searches_series_modality(client, value, expected):
    assert ids(client.get(f"/fhir/ImagingStudy?modality={value}&_count=10")) == expected


def test_repeated_parameters_mean_and(client):
    assert ids(client.get("/fhir/ImagingStudy?modality=MR&modality=SR&_count=10")) == ["1.2.1"]
    assert ids(client.get("/fhir/ImagingStudy?modality=MR&patient=bob&_count=10")) == ["1.2.3"]


# Each expectation derived from FHIR R4 3.1.1.5.9 (ranges by precision, half-open):
# 1.2.1 = [2020-01-01T10:00:00Z, +1s), 1.2.2 = the day 2020-01-02, 1.2.3 = the year 2020.
@pytest.mark.parametrize(
    "value, expected",
    [
        ("2020-01-01", ["1.2.1"]),
        ("eq2020", ["1.2.1", "1.2.2", "1.2.3"]),
        ("2020-01-01T10:00:00Z", ["1.2.1"]),
        ("ne2020-01-01", ["1.2.2", "1.2.3"]),
        ("gt2020-01-01", ["1.2.2", "1.2.3"]),
        ("lt2020-01-02", ["1.2.1", "1.2.3"]),
        ("ge2020-01-02", ["1.2.2", "1.2.3"]),
        ("le2020-01-01T10:00:00Z", ["1.2.1", "1.2.3"]),
        ("gt2020-01-01T09:59:59Z", ["1.2.1", "1.2.2", "1.2.3"]),
        ("lt2020-01-01T10:00:00%2B01:00", ["1.2.3"]),
        ("sa2020-01-01", ["1.2.2"]),
        ("eb2020-01-02", ["1.2.1"]),
        ("gt2020", []),
        ("lt2019-12-31T23:59:59Z", []),
    ],
)
def test_started_date_prefixes(client, value, expected):
    assert ids(client.get(f"/fhir/ImagingStudy?started={value}&_count=10")) == expected


@pytest.mark.parametrize("value", ["2020-13-01", "yesterday", "gx2020", "2020-01-01T25:00:00Z"])
def test_bad_date_is_400_naming_parameter(client, value):
    response = client.get(f"/fhir/ImagingStudy?started={value}")
    assert response.status_code == 400
    body = response.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert "'started'" in body["issue"][0]["diagnostics"]


def test_last_updated_polling(client):
    study = client.get("/fhir/ImagingStudy/1.2.2").get_json()
    seen = study["meta"]["lastUpdated"]
    newer = ids(client.get(f"/fhir/ImagingStudy?_lastUpdated=gt{seen}&_count=10"))
    assert "1.2.2" not in newer and "1.2.1" not in newer
    assert "1.2.2" in ids(client.get(f"/fhir/ImagingStudy?_lastUpdated=ge{seen}&_count=10"))


def test_id_search(client):
    assert ids(client.get("/fhir/ImagingStudy?_id=1.2.3,1.2.1&_count=10")) == ["1.2.1", "1.2.3"]


@pytest.mark.parametrize(
    "query, expected",
    [
        ("name=muller", ["alice"]),  # accent- and case-insensitive prefix
        ("name=MUEL", ["bob"]),
        ("name=zoe", ["alice"]),
        ("family=m", ["alice", "bob"]),
        ("given=Bo", ["bob"]),
        ("family:exact=Müller", ["alice"]),
        ("family:exact=muller", []),
        ("family:contains=ell", ["bob"]),
        ("gender=female", ["alice"]),
        ("gender=http://hl7.org/fhir/administrative-gender|male", ["bob"]),
        ("birthdate=1980-02", ["bob"]),
        ("birthdate=lt1975", ["alice"]),
        ("identifier=urn:oid:1.2.3.4|222", ["bob"]),
        ("identifier=111", ["alice"]),
        ("_id=alice", ["alice"]),
    ],
)
def test_patient_parameters(client, query, expected):
    assert ids(client.get(f"/fhir/Patient?{query}")) == expected


@pytest.mark.parametrize(
    "query, expected",
    [
        ("status=active", ["pacs"]),
        ("status=off", []),
        ("connection-type=dicom-wado-rs", ["pacs"]),
        ("connection-type=http://terminology.hl7.org/CodeSystem/endpoint-connection-type|dicom-wado-rs", ["pacs"]),
        ("_id=pacs", ["pacs"]),
    ],
)
def test_endpoint_parameters(client, query, expected):
    assert ids(client.get(f"/fhir/Endpoint?{query}")) == expected


def test_includes_are_marked_and_not_counted(client):
    response = client.get(
        "/fhir/ImagingStudy?patient=alice&_include=ImagingStudy:endpoint&_include=ImagingStudy:patient&_count=1"
    )
    body = response.get_json()
    assert body["total"] == 2
    assert ids(response) == ["1.2.1"]  # _count=1 counts matches only
    assert ids(response, "include") == ["alice", "pacs"]
    assert all(e["fullUrl"] == f"{BASE}/{e['resource']['resourceType']}/{e['resource']['id']}" for e in body["entry"])
    second = client.get(next_link(body))
    assert ids(second) == ["1.2.2"]
    assert ids(second, "include") == ["alice", "pacs"]  # each page carries its own includes


def test_unsupported_include_is_400(client):
    response = client.get("/fhir/ImagingStudy?_include=ImagingStudy:referrer")
    assert response.status_code == 400
    assert "_include" in response.get_json()["issue"][0]["diagnostics"]


def test_paging_reaches_the_end_without_gaps_or_duplicates(client):
    seen, pages = all_pages(client, "/fhir/ImagingStudy?_count=1")
    assert seen == ["1.2.1", "1.2.2", "1.2.3"] and pages == 3
    seen, pages = all_pages(client, "/fhir/ImagingStudy?_count=2")
    assert seen == ["1.2.1", "1.2.2", "1.2.3"] and pages == 2


def test_total_and_self_link(client):
    body = client.get("/fhir/ImagingStudy?modality=MR&foo=bar").get_json()
    assert body["total"] == 2
    self_link = next(lnk["url"] for lnk in body["link"] if lnk["relation"] == "self")
    assert self_link == f"{BASE}/ImagingStudy?modality=MR"  # foo was not applied, so not shown


@pytest.mark.parametrize("token", ["garbage", "WyJJbWFnaW5nU3R1ZHkiLCIxLjIuMSJd.AAAA", ""])
def test_tampered_paging_token_is_400(client, token):
    response = client.get(f"/fhir/ImagingStudy?_page={token}")
    assert response.status_code == 400
    assert "_page" in response.get_json()["issue"][0]["diagnostics"]


def test_paging_token_of_another_type_is_refused(client):
    body = client.get("/fhir/Patient?_count=1").get_json()
    token = next_link(body).split("_page=")[1]
    assert client.get(f"/fhir/ImagingStudy?_page={token}").status_code == 400


def test_post_search_returns_what_get_returns(client):
    get = client.get("/fhir/ImagingStudy?patient=Patient/alice&modality=MR,CT&_count=10").get_json()
    post = client.post(
        "/fhir/ImagingStudy/_search", data={"patient": "Patient/alice", "modality": "MR,CT", "_count": "10"}
    ).get_json()
    strip = lambda b: [(e["fullUrl"], e["search"]) for e in b["entry"]]  # noqa: E731
    assert strip(get) == strip(post) and get["total"] == post["total"] == 2


def test_strict_handling_rejects_unknown_parameters(client):
    lenient = client.get("/fhir/ImagingStudy?colour=blue&_count=10")
    assert ids(lenient) == ["1.2.1", "1.2.2", "1.2.3"]
    strict = client.get("/fhir/ImagingStudy?colour=blue", headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    assert "colour" in strict.get_json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize("query", ["_count=lots", "modality:fuzzy=MR", "identifier=", "_total=maybe"])
def test_bad_values_are_400_naming_the_parameter(client, query):
    response = client.get(f"/fhir/ImagingStudy?{query}")
    assert response.status_code == 400
    name = query.split("=")[0].split(":")[0]
    assert name in response.get_json()["issue"][0]["diagnostics"]


def test_summary_count(client):
    body = client.get("/fhir/ImagingStudy?patient=alice&_summary=count").get_json()
    assert body["total"] == 2 and "entry" not in body


def test_read_404_405_and_unknown_type(client):
    assert client.get("/fhir/ImagingStudy/1.2.9").status_code == 404
    assert client.get("/fhir/Observation/1").status_code == 404
    for method in ("post", "put", "delete", "patch"):
        response = getattr(client, method)("/fhir/ImagingStudy/1.2.1", json={})
        assert response.status_code == 405, method
        assert response.get_json()["resourceType"] == "OperationOutcome"
    assert client.post("/fhir/ImagingStudy", json={}).status_code == 405


def test_read_etag_and_conditional_read(client):
    response = client.get("/fhir/ImagingStudy/1.2.1")
    assert response.status_code == 200
    assert response.content_type.startswith("application/fhir+json")
    body = response.get_json()
    assert response.headers["ETag"] == f'W/"{body["meta"]["versionId"]}"'
    assert (
        client.get("/fhir/ImagingStudy/1.2.1", headers={"If-None-Match": response.headers["ETag"]}).status_code == 304
    )
    assert (
        client.get(
            "/fhir/ImagingStudy/1.2.1", headers={"If-Modified-Since": response.headers["Last-Modified"]}
        ).status_code
        == 304
    )
    vread = client.get(f"/fhir/ImagingStudy/1.2.1/_history/{body['meta']['versionId']}")
    assert vread.get_json() == body


@pytest.mark.parametrize(
    "tags, status",
    [
        ('W/"{v}"', 304),
        ('"{v}"', 304),  # RFC 9110 §13.1.2: If-None-Match compares weakly, W/ or not
        ('"x", W/"{v}"', 304),
        ('"x",  "{v}" ', 304),
        ("*", 304),
        ('"{v}0"', 200),
        ('W/"x"', 200),
        ('"W/{v}"', 200),  # W/ inside the quotes is part of the opaque tag
        ("", 200),
    ],
)
def test_if_none_match_compares_weakly(client, tags, status):
    version = client.get("/fhir/ImagingStudy/1.2.1").get_json()["meta"]["versionId"]
    response = client.get("/fhir/ImagingStudy/1.2.1", headers={"If-None-Match": tags.format(v=version)})
    assert response.status_code == status
    assert response.headers["ETag"] == f'W/"{version}"'
    vread = client.get(f"/fhir/ImagingStudy/1.2.1/_history/{version}", headers={"If-None-Match": f'"{version}"'})
    assert vread.status_code == 304


@pytest.mark.parametrize(
    "fmt, status",
    [("json", 200), ("application/fhir+json", 200), ("application/json", 200), ("xml", 200), ("ttl", 406)],
)
def test_format_parameter(client, fmt, status):
    assert client.get(f"/fhir/ImagingStudy?_format={fmt}").status_code == status
