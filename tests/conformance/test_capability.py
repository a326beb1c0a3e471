"""The CapabilityStatement lists exactly what works, and the registry matches the official R4
SearchParameter resources (npm package hl7.fhir.r4.examples@4.0.1, fetched once into .cache/)."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from app.search.params import BY_RESOURCE, RESOURCE_TYPES
from tests.support import r4_package


@pytest.fixture(scope="session")
def official_search_parameters() -> dict[tuple[str, str], dict]:
    """(resource type, code) -> the official R4 SearchParameter resource."""
    return r4_package.search_parameters()


def test_capability_statement_is_valid_r4(client):
    body = client.get("/fhir/metadata").get_json()
    CapabilityStatement.model_validate(body)
    assert body["fhirVersion"] == "4.0.1" and body["kind"] == "instance"
    assert {r["type"] for r in body["rest"][0]["resource"]} == set(RESOURCE_TYPES) | {
        "AuditEvent",
        "StructureDefinition",
        "Group",
        "Subscription",
    }


def test_every_listed_parameter_and_include_works(client):
    body = client.get("/fhir/metadata").get_json()
    for resource in body["rest"][0]["resource"]:
        rtype = resource["type"]
        if rtype == "AuditEvent":
            continue  # its own table and search: tests/security/test_audit.py
        if rtype == "StructureDefinition":
            continue  # the profiles, served from their files: tests/conformance/test_definitions.py
        if rtype == "Group":
            continue  # each source's patients, for Bulk Data export: tests/integration/test_bulk_export.py
        if rtype == "Subscription":
            continue  # topic-based Subscriptions: tests/integration/test_subscriptions_api.py
        names = {p["name"] for p in resource["searchParam"]}
        assert names == set(BY_RESOURCE[rtype])
        for param in resource["searchParam"]:
            for modifier_query in (f"{param['name']}:missing=false", f"{param['name']}:missing=true"):
                response = client.get(f"/fhir/{rtype}?{modifier_query}", headers={"Prefer": "handling=strict"})
                assert response.status_code == 200, (rtype, modifier_query, response.get_json())
        for kind in ("Include", "RevInclude"):
            for include in resource[f"search{kind}"]:
                response = client.get(f"/fhir/{rtype}?_{kind.lower()}={include}", headers={"Prefer": "handling=strict"})
                assert response.status_code == 200, (rtype, kind, include)
        assert {i["code"] for i in resource["interaction"]} == {
            "read",
            "vread",
            "history-instance",
            "history-type",
            "search-type",
        }
        history = client.get(f"/fhir/{rtype}/_history?_count=1", headers={"Prefer": "handling=strict"})
        assert history.status_code == 200 and history.get_json()["type"] == "history", rtype


def test_listed_system_interactions_work(client):
    """history-system and batch at the base (FHIR R4 http 3.1.0.11, 3.1.0.12), and AuditEvent read."""
    body = client.get("/fhir/metadata").get_json()
    rest = body["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"history-system", "batch"}
    assert client.get("/fhir/_history?_count=1").get_json()["type"] == "history"
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "metadata"}}]}
    answered = client.post("/fhir", json=batch, headers={"Content-Type": "application/fhir+json"})
    assert answered.status_code == 200 and answered.get_json()["type"] == "batch-response"
    trail = next(r for r in rest["resource"] if r["type"] == "AuditEvent")
    assert {i["code"] for i in trail["interaction"]} == {"read", "search-type"}


def test_missing_modifier_partitions_the_results(client):
    every = client.get("/fhir/ImagingStudy?_count=50").get_json()["total"]
    for name in BY_RESOURCE["ImagingStudy"]:
        with_value = client.get(f"/fhir/ImagingStudy?{name}:missing=false").get_json()["total"]
        without = client.get(f"/fhir/ImagingStudy?{name}:missing=true").get_json()["total"]
        assert with_value + without == every, name


def test_registry_matches_official_r4_definitions(official_search_parameters):
    for rtype in RESOURCE_TYPES:
        for name, param in BY_RESOURCE[rtype].items():
            official = official_search_parameters.get((rtype, name)) or official_search_parameters.get(
                ("Resource", name)
            )
            assert official is not None, (rtype, name)
            assert official["url"] == param.definition, (rtype, name)
            assert official["type"] == param.type, (rtype, name)
            if param.column is None:
                expression = official["expression"]
                for path in param.paths:
                    assert f"{rtype}.{path}" in expression, (rtype, name, expression)
            if param.targets:
                assert set(param.targets) <= set(official.get("target", [])), (rtype, name)


def test_all_imaging_study_parameters_of_r4_are_supported(official_search_parameters):
    official = {code for (base, code) in official_search_parameters if base == "ImagingStudy"}
    assert len(official) == 17
    assert official <= set(BY_RESOURCE["ImagingStudy"])
