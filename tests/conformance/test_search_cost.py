"""What one search may cost is bounded before it runs, and a statement that runs too long is cut
off (issue 16, point 20): each answer is a 400 OperationOutcome `too-costly` naming what was too
much, never a worker held for a minute."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from app.store.repository import Store
from app.web import create_app
from tests.support import search_data
from tests.support.stores import open_config_data


@pytest.fixture
def make_client(store_url, write_config):
    stores = []

    def make(**server):
        config = write_config(open_config_data(store_url, **server))
        store = Store.from_config(config)
        stores.append(store)
        if not stores[:-1]:
            search_data.load(store)
        return create_app(config, store).test_client()

    yield make
    for store in stores:
        store.close()


def _too_costly(response, *named: str) -> str:
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    issue = response.get_json()["issue"][0]
    assert issue["code"] == "too-costly"
    for name in named:
        assert name in issue["diagnostics"]
    return issue["diagnostics"]


def test_chains_are_bounded_in_depth(make_client):
    client = make_client(max_chain_depth=2)
    assert search_data.ids(client.get("/fhir/ImagingStudy?patient.link:Patient.name=x")) == []
    assert search_data.ids(client.get("/fhir/Patient?_has:ImagingStudy:patient:endpoint.status=active")) == [
        "alice",
        "bob",
    ]
    deep = "patient.link:Patient.link:Patient.name"
    _too_costly(client.get(f"/fhir/ImagingStudy?{deep}=x"), f"'{deep}'", "at most 2 levels")
    deep_has = "_has:ImagingStudy:patient:patient.link:Patient.name"
    _too_costly(client.get(f"/fhir/Patient?{deep_has}=x"), f"'{deep_has}'")


def test_the_default_depth_is_three_levels(make_client):
    client = make_client()
    three = "patient.link:Patient.link:Patient.name"
    assert client.get(f"/fhir/ImagingStudy?{three}=x").status_code == 200
    assert client.get("/fhir/Patient?_has:ImagingStudy:patient:patient.link:Patient.name=x").status_code == 200
    _too_costly(client.get(f"/fhir/ImagingStudy?{three.replace('.name', '.link:Patient.name')}=x"), "at most 3 levels")
    # the request of the review: ten chains 100 deep in one GET, refused before any SQL
    hundred = ".".join(["link:Patient"] * 100) + ".name"
    started = time.monotonic()
    _too_costly(client.get("/fhir/Patient?" + "&".join(f"{hundred}=x{i}" for i in range(10))), "levels")
    assert time.monotonic() - started < 1


def test_chains_and_has_are_bounded_in_number(make_client):
    client = make_client(max_chains=2)
    two = "patient.name=M&endpoint.status=active"
    assert client.get(f"/fhir/ImagingStudy?{two}").status_code == 200
    three = "/fhir/ImagingStudy?patient.name=M&patient.gender=female&endpoint.status=active"
    _too_costly(client.get(three), "'endpoint.status'", "at most 2 chained or _has")
    assert client.get("/fhir/ImagingStudy?modality=MR&status=available&patient.name=M").status_code == 200


def test_a_depth_the_database_cannot_take_is_too_costly(make_client, store_url):
    """Allowed deeper than the default, a chain may nest more subqueries than SQLite parses."""
    client = make_client(max_chain_depth=8)
    eight = ".".join(["link:Patient"] * 7) + ".name"
    answer = client.get(f"/fhir/ImagingStudy?patient.{eight}=x")
    if store_url.startswith("sqlite"):
        _too_costly(answer, "SQLite")
    else:
        assert search_data.ids(answer) == []


def test_includes_per_page_are_bounded(make_client):
    client = make_client(max_includes=1)
    one = client.get("/fhir/ImagingStudy?_id=1.2.3&_include=ImagingStudy:patient")
    assert search_data.ids(one, "include") == ["bob"]
    _too_costly(
        client.get("/fhir/ImagingStudy?_include=ImagingStudy:patient&_count=3"),
        "'_include'",
        "at most 1 resources",
        "_count",
    )
    # one match per page stays within the limit, page after page
    seen, pages = search_data.all_pages(client, "/fhir/ImagingStudy?_include=ImagingStudy:patient&_count=1")
    assert sorted(seen) == ["1.2.1", "1.2.2", "1.2.3"] and pages == 3


def test_bad_limits_stop_the_config_naming_the_key(write_config, sqlite_url):
    from app.config import ConfigError

    for key, value in (("max_chain_depth", 0), ("max_includes", 0), ("statement_timeout", 600)):
        with pytest.raises(ConfigError) as caught:
            write_config(open_config_data(sqlite_url, **{key: value}))
        assert f"server.{key}" in str(caught.value)


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_a_statement_past_the_timeout_is_cut_off_and_the_worker_serves_on(make_client, store_url):
    client = make_client(statement_timeout=0.2)
    store = Store(store_url)
    with store.engine.begin() as conn:  # 300,000 named Patients: a hundred :contains patterns take seconds
        conn.execute(
            text(
                "INSERT INTO resource (rtype, id, version, last_updated, content_hash, content) "
                "SELECT 'Patient', 'p' || g, 1, 0, '', '{}'::bytea FROM generate_series(1, 300000) AS g"
            )
        )
        conn.execute(
            text(
                "INSERT INTO idx_string (rtype, rid, param, norm, value) SELECT 'Patient', 'p' || g, 'name', "
                "md5(g::text), md5(g::text) FROM generate_series(1, 300000) AS g"
            )
        )
        conn.execute(text("ANALYZE resource, idx_string"))
    store.close()
    patterns = ",".join(f"zz{i:02d}q" for i in range(100))
    started = time.monotonic()
    message = _too_costly(client.get(f"/fhir/Patient?name:contains={patterns}"), "0.2 s")
    assert time.monotonic() - started < 3
    assert "narrow" in message
    assert search_data.ids(client.get("/fhir/Patient?name=Zoë")) == ["alice"]  # the same connection, still good
