"""History (FHIR R4 http 3.1.0.12) on SQLite and PostgreSQL: deletions as history entries, vread
of a deleted version, instance, type and system history with `_since`, `_at`, `_count` and
paging, and bad parameters.

Each expected answer follows from the spec: history is newest first; an entry for a deletion
has `request.method` DELETE and no resource; `_since` keeps versions created at or after the
instant, `_at` those current at some time in the period; a vread of a deleted version is 410.
"""

from __future__ import annotations

import time

import pytest
from fhir.resources.R4B.bundle import Bundle

from app.store.repository import Store
from app.web import create_app
from tests.conformance.test_result_control import ALICE, BOB, ENDPOINT, _study
from tests.support.bundles import next_link


def _wait_a_millisecond() -> None:
    """meta.lastUpdated is kept to the millisecond: versions a millisecond apart order by it."""
    time.sleep(0.003)


@pytest.fixture
def app_store(store_url, open_config):
    config = open_config(store_url, default_count=10, max_count=50)
    store = Store.from_config(config)
    store.resources.put(ENDPOINT)
    _wait_a_millisecond()
    store.studies.put(_study("1.2.1", "alice", ["MR"], "2020-01-01T10:00:00Z"), ALICE, "pacs")
    _wait_a_millisecond()
    store.studies.put(_study("1.2.2", "bob", ["CT"], "2020-01-02"), BOB, "pacs")
    _wait_a_millisecond()
    yield create_app(config, store), store
    store.close()


@pytest.fixture
def api(app_store):
    return app_store[0].test_client()


def _ok(response):
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    Bundle.model_validate(body)
    assert body["type"] == "history"
    return body


def _versions(body):
    """(type/id, version, method) of each entry, in order."""
    out = []
    for entry in body.get("entry", []):
        url = entry["fullUrl"].split("/fhir/")[1]
        out.append((url, entry["response"]["etag"], entry["request"]["method"]))
    return out


def _follow(api, url):
    seen, pages = [], 0
    while url:
        body = _ok(api.get(url))
        seen += _versions(body)
        url = next_link(body)
        pages += 1
    return seen, pages


# ------------------------------------------------------------------------------------- deletions


def test_a_deletion_is_a_history_entry_and_its_vread_is_410(api, app_store):
    store = app_store[1]
    store.studies.remove("pacs", "1.2.1")
    gone = api.get("/fhir/ImagingStudy/1.2.1")
    assert gone.status_code == 410 and gone.headers["ETag"] == 'W/"2"'

    body = _ok(api.get("/fhir/ImagingStudy/1.2.1/_history"))
    assert body["total"] == 2
    deletion, first = body["entry"]
    # FHIR R4 http 3.1.0.12: a deletion is an entry with request.method DELETE and no resource
    assert "resource" not in deletion
    assert deletion["request"] == {"method": "DELETE", "url": "ImagingStudy/1.2.1"}
    assert deletion["response"]["etag"] == 'W/"2"'
    assert first["resource"]["meta"]["versionId"] == "1"

    vread = api.get("/fhir/ImagingStudy/1.2.1/_history/2")
    assert vread.status_code == 410
    assert vread.headers["ETag"] == 'W/"2"'
    assert vread.get_json()["issue"][0]["code"] == "deleted"
    assert api.get("/fhir/ImagingStudy/1.2.1/_history/1").status_code == 200
    assert api.get("/fhir/ImagingStudy/1.2.1/_history/3").status_code == 404

    # served again: its versions go on after the deletion, which stays in its history
    store.studies.put(_study("1.2.1", "alice", ["MR"], "2020-01-01T10:00:00Z"), ALICE, "pacs")
    body = _ok(api.get("/fhir/ImagingStudy/1.2.1/_history"))
    assert [e[1:] for e in _versions(body)] == [('W/"3"', "PUT"), ('W/"2"', "DELETE"), ('W/"1"', "POST")]


# ------------------------------------------------------------------------------------- levels, order


def test_type_and_system_history_newest_first(api, app_store):
    store = app_store[1]
    store.studies.remove("pacs", "1.2.1")
    studies = _ok(api.get("/fhir/ImagingStudy/_history"))
    assert [e[:2] for e in _versions(studies)] == [
        ("ImagingStudy/1.2.1", 'W/"2"'),
        ("ImagingStudy/1.2.2", 'W/"1"'),
        ("ImagingStudy/1.2.1", 'W/"1"'),
    ]
    assert "resource" not in studies["entry"][0]
    everything = _ok(api.get("/fhir/_history"))
    versions = _versions(everything)
    urls = [e[0] for e in versions]
    assert next(e for e in versions if e[0].startswith("ImagingStudy/")) == ("ImagingStudy/1.2.1", 'W/"2"', "DELETE")
    assert urls[-1] == "Endpoint/pacs", "stored first"
    assert {"Patient/alice", "Patient/bob", "ImagingStudy/1.2.2"} <= set(urls)
    stamps = [e["response"]["lastModified"] for e in everything["entry"]]
    assert stamps == sorted(stamps, reverse=True), "newest first"
    assert everything["link"][0] == {"relation": "self", "url": "http://testserver/fhir/_history"}


@pytest.mark.parametrize(
    "url",
    ["/fhir/ImagingStudy/1.2.1/_history?_count=1", "/fhir/ImagingStudy/_history?_count=1", "/fhir/_history?_count=2"],
)
def test_count_pages_with_next_links(api, app_store, url):
    store = app_store[1]
    store.studies.remove("pacs", "1.2.1")
    store.studies.put(_study("1.2.1", "alice", ["MR"], "2020-01-01T10:00:00Z"), ALICE, "pacs")
    unpaged = _versions(_ok(api.get(url.split("?")[0] + "?_count=50")))
    first = _ok(api.get(url))
    assert len(first["entry"]) == int(url.rsplit("=", 1)[1])
    seen, pages = _follow(api, url)
    assert seen == unpaged and pages > 1
    assert len(seen) == len(set(seen)), "no entry twice"


def test_since_and_at(api, app_store):
    store = app_store[1]
    before = api.get("/fhir/ImagingStudy/1.2.2").get_json()["meta"]["lastUpdated"]
    _wait_a_millisecond()
    store.studies.remove("pacs", "1.2.1")
    deleted_at = _ok(api.get("/fhir/ImagingStudy/1.2.1/_history"))["entry"][0]["response"]["lastModified"]

    # _since: versions created at or after the instant
    since = _versions(_ok(api.get("/fhir/ImagingStudy/_history", query_string={"_since": deleted_at})))
    assert since == [("ImagingStudy/1.2.1", 'W/"2"', "DELETE")]
    assert len(_versions(_ok(api.get("/fhir/ImagingStudy/_history", query_string={"_since": before})))) == 2
    assert _versions(_ok(api.get("/fhir/_history", query_string={"_since": "2999-01-01T00:00:00Z"}))) == []
    instance = _ok(api.get("/fhir/ImagingStudy/1.2.1/_history", query_string={"_since": deleted_at}))
    assert [e[1] for e in _versions(instance)] == ['W/"2"']

    # _at: versions current at some time in the period: at `before`, 1.2.1 was at version 1 and
    # 1.2.2 at version 1; now 1.2.1 is deleted (its version 2)
    at_before = _versions(_ok(api.get("/fhir/ImagingStudy/_history", query_string={"_at": before})))
    assert sorted(at_before) == [("ImagingStudy/1.2.1", 'W/"1"', "POST"), ("ImagingStudy/1.2.2", 'W/"1"', "POST")]
    at_now = _versions(_ok(api.get("/fhir/ImagingStudy/_history", query_string={"_at": "2999"})))
    assert sorted(at_now) == [("ImagingStudy/1.2.1", 'W/"2"', "DELETE"), ("ImagingStudy/1.2.2", 'W/"1"', "POST")]
    assert _versions(_ok(api.get("/fhir/_history", query_string={"_at": "1999"}))) == []


@pytest.mark.parametrize("path", ["/fhir/ImagingStudy/1.2.1/_history", "/fhir/ImagingStudy/_history", "/fhir/_history"])
@pytest.mark.parametrize(
    "name, value",
    [
        ("_since", "yesterday"),
        ("_since", "2020-13-01"),
        ("_since", "2020-01-01T10:00+25:00"),
        ("_at", "20\n20"),
        ("_at", "2020-02-30"),
        ("_count", "-1"),
        ("_count", "²"),
        ("_count", "ten"),
        ("_page", "not-a-token"),
    ],
)
def test_bad_parameters_are_400_naming_them(api, path, name, value):
    response = api.get(path, query_string={name: value})
    assert response.status_code == 400, response.get_data(as_text=True)
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert f"'{name}'" in outcome["issue"][0]["diagnostics"]


def test_strict_handling_refuses_unknown_parameters_only(api):
    strict = {"Prefer": "handling=strict"}
    assert api.get("/fhir/ImagingStudy/_history?modality=MR", headers=strict).status_code == 400
    assert api.get("/fhir/ImagingStudy/_history?modality=MR").status_code == 200  # lenient: ignored
    known = "/fhir/ImagingStudy/1.2.1/_history?_count=1&_since=2020-01-01T00:00:00Z&_at=2999"
    assert api.get(known, headers=strict).status_code == 200


def test_paging_links_belong_to_their_history(api):
    body = _ok(api.get("/fhir/_history?_count=1"))
    token = next_link(body).split("_page=")[1]
    response = api.get(f"/fhir/ImagingStudy/_history?_count=1&_page={token}")
    assert response.status_code == 400
    assert "'_page'" in response.get_json()["issue"][0]["diagnostics"]


def test_unknown_type_history_is_404(api):
    assert api.get("/fhir/Observation/_history").status_code == 404
