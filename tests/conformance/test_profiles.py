"""Our FHIR profiles (fhir_profiles/structure/*.json): well-formed R4 constraint profiles on
the official base definitions, claimed by every resource the server emits and listed in the
CapabilityStatement; every resource a sync of real DICOM files stores meets them.

The constraints are read from the StructureDefinition files (tests/support/structure_check.py), so
changing a profile changes what these tests demand.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from fhir.resources.R4B.structuredefinition import StructureDefinition
from pydicom.data import get_testdata_file
from sqlalchemy import select

from app.fhir.capability import capability_statement
from app.fhir.subscription_body import PROFILE as SUBSCRIPTION_PROFILE
from app.mapping import map_endpoint, map_study
from app.mapping.claims import CANONICAL, PROFILES
from app.mapping.context import MappingContext
from app.sources.folder import FolderSource
from app.store.repository import Store
from app.store.tables import Resource
from app.sync import sync_source
from tests.support import r4_package
from tests.support.keys import TEST_IDENTITY
from tests.support.structure_check import STRUCTURE_DIR, Checker, profile_problems, structure_definitions

SMART = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/"


pytestmark = pytest.mark.npm


def test_each_profile_is_a_valid_r4_structure_definition_under_our_canonical():
    definitions = structure_definitions()
    assert set(definitions) == set(PROFILES.values())
    for url, sd in definitions.items():
        StructureDefinition.model_validate(sd)
        assert url.startswith(CANONICAL + "/StructureDefinition/") and url.endswith("/" + sd["id"])
        assert PROFILES[sd["type"]] == url
        assert sd["fhirVersion"] == "4.0.1" and sd["derivation"] == "constraint"
        assert sd["baseDefinition"] == f"http://hl7.org/fhir/StructureDefinition/{sd['type']}"


def _official(path: str) -> dict:
    """The official R4 element definition of a path, following data types
    ("ImagingStudy.identifier.system" is Identifier.system)."""
    parts = path.split(".")
    snapshot = {e["path"]: e for e in r4_package.definition("StructureDefinition", parts[0])["snapshot"]["element"]}
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in snapshot:
            if cut == len(parts):
                return snapshot[prefix]
            data_type = snapshot[prefix]["type"][0]["code"]
            return _official(".".join([data_type, *parts[cut:]]))
    raise AssertionError(f"{path} is not an R4 element")


def test_profiles_only_narrow_the_official_r4_definitions():
    """Every constrained path exists in R4, and cardinality only narrows (a profile may not
    loosen its base)."""
    for sd in structure_definitions().values():
        for element in sd["differential"]["element"]:
            official = _official(element["path"])
            if "sliceName" in element:
                continue
            if "min" in element:
                assert element["min"] >= official["min"], element["id"]
            if "max" in element and official["max"] != "*":
                assert element["max"] != "*" and int(element["max"]) <= int(official["max"]), element["id"]


def test_profiles_carry_what_smart_imaging_access_asks_for():
    study = {e["id"]: e for e in structure_definitions()[PROFILES["ImagingStudy"]]["differential"]["element"]}
    assert study["ImagingStudy.modality"]["min"] == 1
    assert study["ImagingStudy.endpoint"]["min"] == 1
    assert study["ImagingStudy.identifier:studyInstanceUid.system"]["fixedUri"] == "urn:dicom:uid"
    endpoint = {e["id"]: e for e in structure_definitions()[PROFILES["Endpoint"]]["differential"]["element"]}
    assert endpoint["Endpoint.extension:requiresAccessToken"]["type"][0]["profile"] == [SMART + "requires-access-token"]
    assert endpoint["Endpoint.extension:requiresAccessToken"]["min"] == 1


def test_capability_statement_names_our_profiles():
    body = capability_statement("http://x/fhir", "2026-01-01", {"cors": False, "description": "open"})
    # the served resources claim our profiles; the audit trail (AuditEvent) is the base R4 one, and
    # Subscription the Subscriptions Backport IG's (app/fhir/subscription_body.py)
    profiled = [r for r in body["rest"][0]["resource"] if "supportedProfile" in r and r["type"] != "Subscription"]
    assert {r["type"] for r in profiled} == set(PROFILES)
    (subscription,) = [r for r in body["rest"][0]["resource"] if r["type"] == "Subscription"]
    assert subscription["supportedProfile"] == [SUBSCRIPTION_PROFILE]
    for resource in profiled:
        assert resource["supportedProfile"] == [PROFILES[resource["type"]]]
        assert any(json.loads(p.read_text())["url"] == PROFILES[resource["type"]] for p in STRUCTURE_DIR.glob("*.json"))


# --- the checker finds what breaks a profile ----------------------------------------------------


@pytest.fixture(scope="module")
def mapped_ct():
    ctx = MappingContext("pacs", "UTC", "urn:x", wado_url="http://pacs/dicom-web", identity=TEST_IDENTITY)
    path = Path(get_testdata_file("CT_small.dcm"))
    record = next(iter(FolderSource("pacs", path.parent, only=[path]).iter_studies()))
    mapped = map_study(record, ctx)
    return mapped.imaging_study, mapped.patient, map_endpoint(ctx)


def test_mapped_resources_of_a_real_file_meet_their_profiles(mapped_ct):
    for resource in mapped_ct:
        assert profile_problems(resource) == [], resource["resourceType"]


@pytest.mark.parametrize(
    "index, change, expected",
    [
        (0, lambda r: r.pop("modality"), "ImagingStudy.modality: 0 found, at least 1"),
        (0, lambda r: r.pop("endpoint"), "ImagingStudy.endpoint: 0 found, at least 1"),
        (
            0,
            lambda r: r["identifier"][0].update(system="urn:ietf:rfc:3986"),
            "ImagingStudy.identifier:studyInstanceUid: 0 found, at least 1",
        ),
        (
            0,
            lambda r: r["identifier"].append(dict(r["identifier"][0])),
            "ImagingStudy.identifier:studyInstanceUid: 2 found, at most 1",
        ),
        (0, lambda r: r.update(status="registered"), "ImagingStudy.status: 'registered' is not the fixed value"),
        (0, lambda r: r.update(subject={"reference": "Group/1"}), "ImagingStudy.subject: reference 'Group/1'"),
        (0, lambda r: r["series"][0].pop("numberOfInstances"), "ImagingStudy.series.numberOfInstances: 0 found"),
        (0, lambda r: r.update(meta={"profile": ["http://example.org/other"]}), "claims none of our profiles"),
        (1, lambda r: r.pop("gender"), "Patient.gender: 0 found, at least 1"),
        (1, lambda r: r["identifier"][0].pop("system"), "Patient.identifier.system: 0 found, at least 1"),
        (2, lambda r: r.pop("extension"), "Endpoint.extension:requiresAccessToken: 0 found, at least 1"),
        (2, lambda r: r["extension"][0].update(valueBoolean="yes"), "value[x]: 'yes' is not a boolean"),
        (2, lambda r: r["connectionType"].update(code="dicom-qido-rs"), "Endpoint.connectionType"),
        (2, lambda r: r.pop("payloadMimeType"), "Endpoint.payloadMimeType: 0 found, at least 1"),
    ],
)
def test_the_checker_finds_each_broken_constraint(mapped_ct, index, change, expected):
    resource = copy.deepcopy(mapped_ct[index])
    change(resource)
    problems = profile_problems(resource)
    assert any(expected in problem for problem in problems), problems


def test_changing_a_profile_file_changes_what_is_checked(mapped_ct):
    sd = copy.deepcopy(structure_definitions()[PROFILES["ImagingStudy"]])
    sd["differential"]["element"].append(
        {"id": "ImagingStudy.referrer", "path": "ImagingStudy.referrer", "min": 1, "max": "1"}
    )
    study = mapped_ct[0]
    assert "referrer" not in study
    assert Checker(sd).problems(study) == ["ImagingStudy.referrer: 0 found, at least 1 required"]


# --- every resource a sync of real files stores ---------------------------------------------------


@pytest.fixture(scope="module")
def synced_sample(tmp_path_factory):
    """The sample archive, built as the README's run command builds it
    (scripts/make_sample_archive.py: every file pydicom ships), synced with the shipped
    config.yaml's source into a fresh SQLite store."""
    import yaml

    from app.config import load_config

    repo = Path(__file__).resolve().parents[2]
    work = tmp_path_factory.mktemp("sample")
    subprocess.run(
        [sys.executable, "scripts/make_sample_archive.py", str(work / "sample-archive")],
        cwd=repo,
        check=True,
        capture_output=True,
        timeout=120,
    )
    shipped = yaml.safe_load((repo / "config.yaml").read_text())
    shipped["store"] = f"sqlite:///{work / 'facade.db'}"
    (work / "config.yaml").write_text(yaml.safe_dump(shipped))
    config = load_config(work / "config.yaml", environ={})
    store = Store.from_config(config)
    summary = sync_source(store, config.sources[0])
    assert summary.error is None and summary.new >= 25
    with store.engine.connect() as conn:
        resources = [orjson.loads(r.content) for r in conn.execute(select(Resource.content))]
    store.close()
    return resources


def test_every_stored_resource_meets_the_profile_it_claims(synced_sample, valid_r4):
    kinds = {r["resourceType"] for r in synced_sample}
    assert kinds == {"ImagingStudy", "Patient", "Endpoint"}
    for resource in synced_sample:
        valid_r4(resource)
        assert resource["meta"]["profile"] == [PROFILES[resource["resourceType"]]]
        assert profile_problems(resource) == [], (resource["resourceType"], resource["id"])
