"""Result control and the less common search features, on SQLite and PostgreSQL: _sort, paging
while data changes, expired and foreign paging links, _total, _summary, _elements, token
:text and :of-type, reference :identifier, Patient phonetic, instance history and gzip.

The data are small hand-written R4 resources; each expected answer is derived from the spec
(FHIR R4 search 3.1.1.5) in a comment or by reading the data.
"""

from __future__ import annotations

import gzip
import time

import pytest
from fhir.resources.R4B.bundle import Bundle

from app.search.paging import PageTokens
from app.search.query import SearchError
from app.store.repository import Store
from app.web import create_app
from tests.support.bundles import next_link
from tests.support.search_data import ids

DCM = "http://dicom.nema.org/resources/ontology/DCM"
V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SUBSETTED = "SUBSETTED"


def _patient(pid, name, gender=None, birth=None, mrn=None):
    body = {"resourceType": "Patient", "id": pid}
    if mrn:
        body["identifier"] = [
            {
                "type": {"coding": [{"system": V2, "code": "MR"}], "text": "Medical record number"},
                "system": "urn:oid:1.2.3.4",
                "value": mrn,
            }
        ]
    if name:
        body["name"] = [name]
    if gender:
        body["gender"] = gender
    if birth:
        body["birthDate"] = birth
    return body


def _study(uid, pid, modalities, started=None, accession_text=None, display=None, reason=None):
    accession = {"type": {"coding": [{"system": V2, "code": "ACSN"}]}, "system": "urn:oid:9.9", "value": f"A{uid[-1]}"}
    if accession_text:
        accession["type"]["text"] = accession_text
    body = {
        "resourceType": "ImagingStudy",
        "id": uid,
        "status": "available",
        "extension": [{"url": "urn:example:not-in-summary", "valueString": "x"}],
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}, accession],
        "modality": [{"system": DCM, "code": m} for m in sorted(set(modalities))],
        "subject": {"reference": f"Patient/{pid}"},
        "basedOn": [{"type": "ServiceRequest", "identifier": {"system": "urn:oid:9.9", "value": f"A{uid[-1]}"}}],
        "endpoint": [{"reference": "Endpoint/pacs"}],
        "numberOfSeries": len(modalities),
        "series": [
            {
                "uid": f"{uid}.{i}",
                "modality": {"system": DCM, "code": m, **({"display": display} if display else {})},
                "instance": [
                    {
                        "uid": f"{uid}.{i}.1",
                        "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.4"},
                    }
                ],
            }
            for i, m in enumerate(modalities)
        ],
    }
    if started:
        body["started"] = started
    if reason:
        body["reasonCode"] = [{"text": reason}]
    return body


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

ALICE = _patient("alice", {"family": "Müller", "given": ["Zoë"]}, "female", "1970-05-01", "111")
BOB = _patient("bob", {"family": "Mueller", "given": ["Bob"]}, "male", "1980-02-29", "222")
CAROL = _patient("carol", {"family": "Smyth", "given": ["Carol", "Ann"]}, "female", "1990", "333")
DAVE = _patient("dave", None)  # no name, no birth date: sorts last


@pytest.fixture
def app_store(store_url, open_config):
    config = open_config(store_url, default_count=10, max_count=50)
    store = Store.from_config(config)
    store.resources.put(ENDPOINT)
    store.studies.put(
        _study(
            "1.2.1", "alice", ["MR", "SR"], "2020-01-01T10:00:00Z", "Accession ID", "Magnetic Resonance", "headache"
        ),
        ALICE,
        "pacs",
    )
    store.studies.put(_study("1.2.2", "alice", ["CT"], "2020-01-02", "Accession ID"), ALICE, "pacs")
    store.studies.put(_study("1.2.3", "bob", ["MR"], "2020"), BOB, "pacs")
    store.studies.put(_study("1.2.4", "carol", ["US"]), CAROL, "pacs")
    store.studies.put(_study("1.2.5", "dave", ["CR"], "2019-06-01"), DAVE, "pacs")
    yield create_app(config, store), store
    store.close()


@pytest.fixture
def api(app_store):
    return app_store[0].test_client()


def order(response):
    assert response.status_code == 200, response.get_data(as_text=True)
    return [e["resource"]["id"] for e in response.get_json().get("entry", []) if e["search"]["mode"] == "match"]


def follow(api, url):
    """Match ids over every page, in order."""
    seen = []
    while url:
        body = api.get(url).get_json()
        seen += [e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "match"]
        url = next_link(body)
    return seen


# ------------------------------------------------------------------------------------------- _sort


# started: 1.2.1 = 2020-01-01T10:00:00Z, 1.2.2 = the day 2020-01-02, 1.2.3 = the year 2020,
# 1.2.4 none, 1.2.5 = 2019-06-01. Dates sort by the start of their period; no value sorts last.
# series.modality repeats: 1.2.1 has MR and SR, so it sorts as MR ascending and as SR descending.
@pytest.mark.parametrize(
    "sort, expected",
    [
        ("started", ["1.2.5", "1.2.3", "1.2.1", "1.2.2", "1.2.4"]),
        ("-started", ["1.2.2", "1.2.1", "1.2.3", "1.2.5", "1.2.4"]),
        ("modality", ["1.2.5", "1.2.2", "1.2.1", "1.2.3", "1.2.4"]),
        ("-modality", ["1.2.4", "1.2.1", "1.2.3", "1.2.2", "1.2.5"]),
        ("patient,-started", ["1.2.2", "1.2.1", "1.2.3", "1.2.4", "1.2.5"]),
        ("-_id", ["1.2.5", "1.2.4", "1.2.3", "1.2.2", "1.2.1"]),
        ("status", ["1.2.1", "1.2.2", "1.2.3", "1.2.4", "1.2.5"]),  # all equal: ties broken by id
    ],
)
def test_sort_orders_studies(api, sort, expected):
    assert order(api.get(f"/fhir/ImagingStudy?_sort={sort}")) == expected
    assert follow(api, f"/fhir/ImagingStudy?_sort={sort}&_count=2") == expected, "paging keeps the order"


@pytest.mark.parametrize(
    "sort, expected",
    [
        ("family", ["bob", "alice", "carol", "dave"]),  # mueller < muller (accents removed) < smyth; none last
        ("-family", ["carol", "alice", "bob", "dave"]),
        ("birthdate", ["alice", "bob", "carol", "dave"]),
        ("-birthdate,_id", ["carol", "bob", "alice", "dave"]),
        ("given", ["carol", "bob", "alice", "dave"]),  # Carol Ann sorts by Ann ascending
    ],
)
def test_sort_orders_patients(api, sort, expected):
    assert order(api.get(f"/fhir/Patient?_sort={sort}")) == expected
    assert follow(api, f"/fhir/Patient?_sort={sort}&_count=1") == expected


def test_sort_by_last_updated_follows_writes(api, app_store):
    store = app_store[1]
    store.studies.put(_study("1.2.3", "bob", ["MR", "CT"], "2020"), BOB, "pacs")  # a new version: now the newest
    assert order(api.get("/fhir/ImagingStudy?_sort=-_lastUpdated"))[0] == "1.2.3"


@pytest.mark.parametrize("sort", ["phonetic", "colour", "-", "family,,given"])
def test_unsortable_is_400_naming_sort(api, sort):
    response = api.get(f"/fhir/Patient?_sort={sort}")
    assert response.status_code == 400
    assert "_sort" in response.get_json()["issue"][0]["diagnostics"]


def test_pages_stay_stable_while_studies_arrive(api, app_store):
    store = app_store[1]
    first = api.get("/fhir/ImagingStudy?_sort=-started&_count=2").get_json()
    assert [e["resource"]["id"] for e in first["entry"]] == ["1.2.2", "1.2.1"]
    # one study sorts before the cursor (already paged past), one after it
    store.studies.put(_study("1.2.7", "bob", ["CT"], "2024-01-01"), BOB, "pacs")
    store.studies.put(_study("1.2.8", "bob", ["CT"], "2015-01-01"), BOB, "pacs")
    rest = follow(api, next_link(first))
    assert rest == ["1.2.3", "1.2.5", "1.2.8", "1.2.4"]  # nothing repeated, nothing skipped


# ------------------------------------------------------------------------------------------- paging


def test_next_link_used_with_another_search_is_400(api):
    body = api.get("/fhir/ImagingStudy?_sort=started&_count=2").get_json()
    link = next_link(body)
    assert api.get(link).status_code == 200
    changed = link.replace("_sort=started", "_sort=-started")
    response = api.get(changed)
    assert response.status_code == 400
    assert "another search" in response.get_json()["issue"][0]["diagnostics"]


@pytest.mark.slow
def test_expired_paging_token_is_400():
    tokens = PageTokens("a secret", max_age=1)
    token = tokens.make("digest", ["1.2.3"])
    assert tokens.read("digest", token) == ["1.2.3"]
    time.sleep(2.1)
    with pytest.raises(SearchError, match="expired"):
        tokens.read("digest", token)


@pytest.mark.slow
def test_expired_next_link_over_http_is_400(store_url, open_config):
    config = open_config(store_url, default_count=1, page_ttl=1)
    store = Store.from_config(config)
    store.studies.put(_study("1.2.1", "alice", ["MR"], "2020"), ALICE, "pacs")
    store.studies.put(_study("1.2.2", "alice", ["CT"], "2020"), ALICE, "pacs")
    api = create_app(config, store).test_client()
    link = next_link(api.get("/fhir/ImagingStudy").get_json())
    time.sleep(2.1)
    response = api.get(link)
    store.close()
    assert response.status_code == 400
    assert "expired" in response.get_json()["issue"][0]["diagnostics"]


def test_paging_links_are_short(api):
    body = api.get("/fhir/ImagingStudy?_sort=patient,-started,modality&_count=1").get_json()
    token = next_link(body).split("_page=")[1]
    assert len(token) < 160, token


# ------------------------------------------------------------------------------------------- _total


@pytest.mark.parametrize("total, expected", [("none", None), ("estimate", 5), ("accurate", 5)])
def test_total_modes(api, total, expected):
    body = api.get(f"/fhir/ImagingStudy?_total={total}&_count=2").get_json()
    assert body.get("total") == expected
    assert len(body["entry"]) == 2


# ------------------------------------------------------------------------------------------- _summary / _elements


def _tags(resource):
    return [t["code"] for t in resource.get("meta", {}).get("tag", [])]


def test_summary_true_keeps_summary_elements_only(api, valid_r4):
    body = api.get("/fhir/ImagingStudy?_id=1.2.1&_summary=true").get_json()
    study = body["entry"][0]["resource"]
    valid_r4(study)
    assert "extension" not in study  # not a summary element
    assert study["identifier"] and study["subject"] and study["modality"] and study["numberOfSeries"] == 2
    assert study["series"][0]["uid"] and "instance" not in study["series"][0]  # series.instance is not summary
    assert _tags(study) == [SUBSETTED]


def test_summary_text_and_data(api):
    text = api.get("/fhir/ImagingStudy/1.2.1?_summary=text").get_json()
    assert set(text) == {"resourceType", "id", "meta", "text", "status", "subject"}  # the narrative + mandatory
    assert text["text"]["status"] == "generated"
    data = api.get("/fhir/ImagingStudy/1.2.1?_summary=data").get_json()
    full = api.get("/fhir/ImagingStudy/1.2.1").get_json()
    assert "text" in full and "text" not in data
    assert {k: v for k, v in data.items() if k != "meta"} == {
        k: v for k, v in full.items() if k not in ("meta", "text")
    }
    assert _tags(data) == [SUBSETTED] and _tags(full) == []


def test_summary_applies_to_includes(api):
    body = api.get("/fhir/ImagingStudy?_id=1.2.1&_include=ImagingStudy:patient&_summary=true").get_json()
    patient = next(e["resource"] for e in body["entry"] if e["search"]["mode"] == "include")
    assert _tags(patient) == [SUBSETTED]


def test_elements_on_search_and_read(api, valid_r4):
    body = api.get("/fhir/ImagingStudy?_id=1.2.1&_elements=identifier,started&_include=ImagingStudy:patient").get_json()
    study = next(e["resource"] for e in body["entry"] if e["search"]["mode"] == "match")
    # the named elements plus the mandatory ones (status, subject), id and meta
    assert set(study) == {"resourceType", "id", "meta", "identifier", "started", "status", "subject"}
    valid_r4(study)
    patient = next(e["resource"] for e in body["entry"] if e["search"]["mode"] == "include")
    assert "name" in patient and _tags(patient) == []  # _elements names elements of the searched type
    read = api.get("/fhir/Patient/alice?_elements=gender").get_json()
    assert set(read) == {"resourceType", "id", "meta", "gender"} and _tags(read) == [SUBSETTED]


@pytest.mark.parametrize(
    "query", ["_elements=identifier&_summary=true", "_elements=colour", "_elements=", "_summary=maybe"]
)
def test_bad_subsetting_is_400(api, query):
    response = api.get(f"/fhir/ImagingStudy?{query}")
    assert response.status_code == 400
    diagnostics = response.get_json()["issue"][0]["diagnostics"]
    assert "_elements" in diagnostics or "_summary" in diagnostics
    assert api.get(f"/fhir/ImagingStudy/1.2.1?{query}").status_code == 400


def test_summary_count_on_read_is_400(api):
    assert api.get("/fhir/ImagingStudy/1.2.1?_summary=count").status_code == 400


# ------------------------------------------------------------------------------------------- modifiers


@pytest.mark.parametrize(
    "query, expected",
    [
        ("ImagingStudy?modality:text=magnetic", ["1.2.1"]),  # Coding.display of series.modality
        ("ImagingStudy?modality:text=MAGNETIC%20RES", ["1.2.1"]),
        ("ImagingStudy?modality:text=resonance", []),  # prefix match, like a string
        ("ImagingStudy?identifier:text=accession", ["1.2.1", "1.2.2"]),  # Identifier.type.text
        ("ImagingStudy?reason:text=head", ["1.2.1"]),  # CodeableConcept.text
        (f"ImagingStudy?identifier:of-type={V2}|ACSN|A1", ["1.2.1"]),
        (f"ImagingStudy?identifier:of-type={V2}|ACSN|A1,{V2}|ACSN|A3", ["1.2.1", "1.2.3"]),
        (f"ImagingStudy?identifier:of-type={V2}|MR|A1", []),
        (f"Patient?identifier:of-type={V2}|MR|111", ["alice"]),
        ("ImagingStudy?basedon:identifier=urn:oid:9.9|A1", ["1.2.1"]),
        ("ImagingStudy?basedon:identifier=A2", ["1.2.2"]),
        ("ImagingStudy?basedon:identifier=urn:oid:1.1|A2", []),
        ("Patient?phonetic=Miller", ["alice", "bob"]),  # Müller and Mueller sound like Miller
        ("Patient?phonetic=smith", ["carol"]),
        ("Patient?phonetic=Zoe%20Muller", ["alice"]),  # every word must sound like a name part
        ("Patient?phonetic=Zoe%20Smith", []),
        ("Patient?phonetic=Bob,Smith", ["bob", "carol"]),
        ("Patient?phonetic:missing=true", ["dave"]),
        ("ImagingStudy?patient.phonetic=Smith", ["1.2.4"]),
        ("ImagingStudy?patient.birthdate=1970", ["1.2.1", "1.2.2"]),
        ("ImagingStudy?patient.birthdate=ge1980", ["1.2.3", "1.2.4"]),
    ],
)
def test_modifiers(api, query, expected):
    response = api.get(f"/fhir/{query}", headers={"Prefer": "handling=strict"})
    assert sorted(order(response)) == expected


@pytest.mark.parametrize(
    "query",
    [
        "ImagingStudy?modality:of-type=a|b|c",
        "Patient?phonetic:exact=Smith",
        "ImagingStudy?identifier:of-type=ACSN|A1",
        "ImagingStudy?started:text=x",
    ],
)
def test_unsupported_modifier_use_is_400(api, query):
    response = api.get(f"/fhir/{query}")
    assert response.status_code == 400
    assert query.split("?")[1].split("=")[0] in response.get_json()["issue"][0]["diagnostics"]


# ------------------------------------------------------------------------------------------- history, gzip


def test_instance_history(api, app_store):
    store = app_store[1]
    store.studies.put(_study("1.2.1", "alice", ["MR", "SR", "CT"], "2020-01-01T10:00:00Z"), ALICE, "pacs")
    response = api.get("/fhir/ImagingStudy/1.2.1/_history")
    assert response.status_code == 200
    body = response.get_json()
    Bundle.model_validate(body)
    assert body["type"] == "history" and body["total"] == 2
    versions = [e["resource"]["meta"]["versionId"] for e in body["entry"]]
    assert versions == ["2", "1"]  # newest first
    assert [e["response"]["etag"] for e in body["entry"]] == ['W/"2"', 'W/"1"']
    assert body["entry"][1]["resource"] == api.get("/fhir/ImagingStudy/1.2.1/_history/1").get_json()
    assert api.get("/fhir/ImagingStudy/9.9/_history").status_code == 404
    assert api.get("/fhir/ImagingStudy/bad$id/_history").status_code == 404


def test_gzip_when_asked(api):
    plain = api.get("/fhir/ImagingStudy?_count=10")
    zipped = api.get("/fhir/ImagingStudy?_count=10", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in plain.headers
    assert zipped.headers["Content-Encoding"] == "gzip"
    body = zipped.get_data()
    assert len(body) < len(plain.get_data()) / 3
    unzipped = __import__("orjson").loads(gzip.decompress(body))
    assert [e["resource"] for e in unzipped["entry"]] == [e["resource"] for e in plain.get_json()["entry"]]


# ------------------------------------------------------------------------------------------- date table

# Every prefix against year, day and second precision of the search value, over stored values
# of second (1.2.1 = [2020-01-01T10:00:00Z, +1s)), day (1.2.2 = 2020-01-02) and year (1.2.3 = 2020)
# precision. R4 3.1.1.5.9: eq = search range contains target; gt = target ends after the search
# range ends; lt = target starts before it starts; ge/le = gt/lt or eq; sa = target starts at or
# after the search range's end; eb = target ends at or before its start.
A, B, C = "1.2.1", "1.2.2", "1.2.3"
DATE_TABLE = {
    "2020": {"eq": [A, B, C], "ne": [], "gt": [], "lt": [], "ge": [A, B, C], "le": [A, B, C], "sa": [], "eb": []},
    "2020-01-02": {
        "eq": [B],
        "ne": [A, C],
        "gt": [C],
        "lt": [A, C],
        "ge": [B, C],
        "le": [A, B, C],
        "sa": [],
        "eb": [A],
    },
    "2020-01-01T10:00:00Z": {
        "eq": [A],
        "ne": [B, C],
        "gt": [B, C],
        "lt": [C],
        "ge": [A, B, C],
        "le": [A, C],
        "sa": [B],
        "eb": [],
    },
}


@pytest.mark.parametrize(
    "value, prefix, expected", [(v, p, e) for v, row in DATE_TABLE.items() for p, e in row.items()]
)
def test_date_prefix_table(client, value, prefix, expected):
    assert ids(client.get(f"/fhir/ImagingStudy?started={prefix}{value}&_count=10")) == expected
