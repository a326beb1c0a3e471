"""Chaining, reverse chaining (_has), _include/_revinclude with :iterate and *, on SQLite and PostgreSQL.

Same data as test_search: alice (Müller, female, 1970) has studies 1.2.1 (MR, SR) and 1.2.2 (CT);
bob (Mueller, male, 1980) has 1.2.3 (MR); every study points at Endpoint pacs.
"""

from __future__ import annotations

import pytest

from tests.support.bundles import next_link
from tests.support.search_data import all_pages, ids


@pytest.mark.parametrize(
    "query, expected",
    [
        ("patient.identifier=urn:oid:1.2.3.4|111", ["1.2.1", "1.2.2"]),
        ("patient.identifier=222", ["1.2.3"]),
        ("subject:Patient.name=mueller", ["1.2.3"]),
        ("subject.name=muller", ["1.2.1", "1.2.2"]),  # only Patient among subject's targets is held here
        ("patient.birthdate=1980-02-29", ["1.2.3"]),
        ("patient.gender=female", ["1.2.1", "1.2.2"]),
        ("patient.family:exact=Müller", ["1.2.1", "1.2.2"]),
        ("patient._id=bob", ["1.2.3"]),
        ("patient.identifier=111,222", ["1.2.1", "1.2.2", "1.2.3"]),
        ("patient.identifier=999", []),
        ("endpoint.status=active", ["1.2.1", "1.2.2", "1.2.3"]),
        ("endpoint.status=off", []),
        ("patient.gender=female&modality=MR", ["1.2.1"]),
        ("patient._has:ImagingStudy:patient:modality=CT", ["1.2.1", "1.2.2"]),  # chain into _has
    ],
)
def test_chained_parameters(client, query, expected):
    assert ids(client.get(f"/fhir/ImagingStudy?{query}&_count=10")) == expected


@pytest.mark.parametrize(
    "query, expected",
    [
        ("_has:ImagingStudy:patient:modality=CT", ["alice"]),
        ("_has:ImagingStudy:patient:modality=MR", ["alice", "bob"]),
        ("_has:ImagingStudy:subject:started=2020", ["alice", "bob"]),
        ("_has:ImagingStudy:patient:started=2020-01-02", ["alice"]),
        ("_has:ImagingStudy:patient:endpoint.status=active", ["alice", "bob"]),  # _has into a chain
        ("_has:ImagingStudy:patient:modality=CT&gender=male", []),
        ("_has:ImagingStudy:patient:modality=NM", []),
    ],
)
def test_reverse_chaining(client, query, expected):
    assert ids(client.get(f"/fhir/Patient?{query}&_count=10")) == expected


def test_has_on_endpoint(client):
    assert ids(client.get("/fhir/Endpoint?_has:ImagingStudy:endpoint:modality=CT")) == ["pacs"]


def test_chain_get_and_post_agree(client):
    get = ids(client.get("/fhir/ImagingStudy?patient.identifier=111&_count=10"))
    post = ids(client.post("/fhir/ImagingStudy/_search", data={"patient.identifier": "111", "_count": "10"}))
    assert get == post == ["1.2.1", "1.2.2"]


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("/fhir/ImagingStudy?basedon.identifier=x", "basedon"),  # points at nothing held here
        ("/fhir/ImagingStudy?modality.code=MR", "modality"),  # not a reference
        ("/fhir/ImagingStudy?subject:Device.name=x", "subject:Device"),
        ("/fhir/Patient?_has:ImagingStudy:referrer:modality=MR", "_has"),
        ("/fhir/Patient?_has:ImagingStudy:patient", "_has"),
        ("/fhir/Patient?_has:Observation:patient:code=x", "Observation"),
        ("/fhir/Patient?_revinclude=ImagingStudy:referrer", "_revinclude"),
        ("/fhir/Patient?_revinclude=ImagingStudy:endpoint", "_revinclude"),
        ("/fhir/ImagingStudy?_include=Patient:link", "_include"),
        ("/fhir/ImagingStudy?patient.started=2020", "patient.started"),  # strict: unknown on Patient
    ],
)
def test_bad_chains_are_400_naming_the_parameter(client, query, fragment):
    response = client.get(query, headers={"Prefer": "handling=strict"})
    assert response.status_code == 400, response.get_json()
    assert fragment in response.get_json()["issue"][0]["diagnostics"]


def test_unknown_chained_parameter_is_ignored_when_lenient(client):
    body = client.get("/fhir/ImagingStudy?patient.colour=blue&_count=10").get_json()
    assert body["total"] == 3
    assert next(lnk["url"] for lnk in body["link"] if lnk["relation"] == "self").endswith("/ImagingStudy?_count=10")


def _modes(response):
    body = response.get_json()
    return (
        {e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "match"},
        {e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "include"},
    )


def test_revinclude_pages_carry_their_own_referrers(client):
    first = client.get("/fhir/Patient?_revinclude=ImagingStudy:patient&_count=1")
    assert first.get_json()["total"] == 2
    assert _modes(first) == ({"alice"}, {"1.2.1", "1.2.2"})
    second = client.get(next_link(first.get_json()))
    assert _modes(second) == ({"bob"}, {"1.2.3"})
    assert next_link(second.get_json()) is None


def test_endpoint_revinclude(client):
    assert _modes(client.get("/fhir/Endpoint?_revinclude=ImagingStudy:endpoint")) == (
        {"pacs"},
        {"1.2.1", "1.2.2", "1.2.3"},
    )


def test_iterate_follows_included_resources(client):
    # without :iterate an _include starts from the matches, which are Patients here: refused, not ignored
    plain = client.get("/fhir/Patient?_id=bob&_revinclude=ImagingStudy:patient&_include=ImagingStudy:endpoint")
    assert plain.status_code == 400 and "_include" in plain.get_json()["issue"][0]["diagnostics"]
    iterated = client.get(
        "/fhir/Patient?_id=bob&_revinclude=ImagingStudy:patient&_include:iterate=ImagingStudy:endpoint"
    )
    assert _modes(iterated) == ({"bob"}, {"1.2.3", "pacs"})
    # and back again: endpoint -> every study -> every patient, each once
    around = client.get(
        "/fhir/Patient?_id=bob&_revinclude=ImagingStudy:patient"
        "&_include:iterate=ImagingStudy:endpoint&_revinclude:iterate=ImagingStudy:endpoint"
        "&_include:iterate=ImagingStudy:patient"
    )
    matches, included = _modes(around)
    assert matches == {"bob"} and included == {"1.2.1", "1.2.2", "1.2.3", "pacs", "alice"}
    entries = around.get_json()["entry"]
    assert len(entries) == len({(e["resource"]["resourceType"], e["resource"]["id"]) for e in entries})


def test_include_wildcard(client):
    assert _modes(client.get("/fhir/ImagingStudy?_id=1.2.3&_include=*")) == ({"1.2.3"}, {"bob", "pacs"})
    assert _modes(client.get("/fhir/Patient?_id=alice&_revinclude=*")) == ({"alice"}, {"1.2.1", "1.2.2"})


def test_revinclude_does_not_count_toward_count(client):
    seen, pages = all_pages(client, "/fhir/Patient?_revinclude=ImagingStudy:patient&_count=1")
    assert seen == ["alice", "bob"] and pages == 2
