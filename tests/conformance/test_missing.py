"""`:missing` agrees with every other way of matching a parameter (issue 16, point 13): an element
that is present counts as present whatever it holds (FHIR R4 search 3.1.1.5.2), be it a code, a
text alone, an identifier alone or a reference."""

from __future__ import annotations

import contextlib
import copy

import pytest
import yaml

from app.config import load_config
from app.search.params import BY_RESOURCE
from app.store.repository import Store
from app.web import create_app
from tests.support import search_data
from tests.support.stores import new_sqlite_store, open_config_data, postgres_database

ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}


def _endpoint(eid: str, payload: list | None) -> dict:
    endpoint = copy.deepcopy(search_data.ENDPOINT) | {"id": eid}
    if payload is None:
        del endpoint["payloadType"]
    else:
        endpoint["payloadType"] = payload
    return endpoint


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(request, tmp_path_factory, _empty_sqlite_store):
    """The conformance data, studies with and without basedOn (an accession: an identifier alone),
    and Endpoints whose payloadType is a text alone, a code alone, or absent."""
    folder = tmp_path_factory.mktemp("missing")
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = new_sqlite_store(folder, _empty_sqlite_store)
        else:
            url = stack.enter_context(postgres_database())
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(open_config_data(url), sort_keys=False))
        config = load_config(path)
        store = Store.from_config(config)
        stack.callback(store.close)
        search_data.load(store)
        store.resources.put(_endpoint("text-only", [{"text": "DICOM"}]))
        store.resources.put(_endpoint("coded", [{"coding": [{"system": "urn:x", "code": "dicom"}]}]))
        store.resources.put(_endpoint("none", None))
        alice = search_data._patient("alice", "Müller", "Zoë", "female", "1970-05-01", "111")
        for uid, accession in (("1.3.1", "2"), ("1.3.2", None)):
            study = search_data._study(uid, "alice", ["CT"], "2021")
            if accession:
                study["basedOn"] = [{"type": "ServiceRequest", "identifier": {"type": ACSN, "value": accession}}]
            store.studies.put(study, alice, "pacs")
        named = search_data._study("1.3.3", "alice", ["MR"], "2022")  # people as names alone, as DICOM gives them
        named["referrer"] = {"display": "Referring^Rita"}
        named["interpreter"] = [{"display": "Reading^Ray"}]
        named["series"][0]["performer"] = [{"actor": {"display": "Operator^Olga"}}]
        store.studies.put(named, alice, "pacs")
        yield create_app(config, store).test_client()


def _ids(client, url: str) -> set[str]:
    return set(search_data.ids(client.get(url)))


def test_an_identifier_only_reference_is_present(client):
    with_order = _ids(client, "/fhir/ImagingStudy?basedon:identifier=|2")
    assert with_order == {"1.3.1"}
    present = _ids(client, "/fhir/ImagingStudy?basedon:missing=false")
    missing = _ids(client, "/fhir/ImagingStudy?basedon:missing=true")
    assert present == {"1.3.1"}
    assert missing == {"1.2.1", "1.2.2", "1.2.3", "1.3.2", "1.3.3"}


def test_a_text_only_code_is_present(client):
    assert _ids(client, "/fhir/Endpoint?payload-type:text=DICOM") == {"pacs", "text-only"}
    assert _ids(client, "/fhir/Endpoint?payload-type:missing=true") == {"none"}
    assert _ids(client, "/fhir/Endpoint?payload-type:missing=false") == {"pacs", "text-only", "coded"}


@pytest.mark.parametrize("rtype", ["ImagingStudy", "Patient", "Endpoint"])
def test_missing_true_and_false_split_every_type(client, rtype):
    everything = _ids(client, f"/fhir/{rtype}?_count=100")
    for name, param in BY_RESOURCE[rtype].items():
        if not param.modifiers:
            continue
        missing = _ids(client, f"/fhir/{rtype}?{name}:missing=true&_count=100")
        present = _ids(client, f"/fhir/{rtype}?{name}:missing=false&_count=100")
        assert missing | present == everything and not missing & present, name


@pytest.mark.parametrize("name", ["referrer", "interpreter", "performer"])
def test_a_reference_given_as_a_name_alone_is_present(client, name):
    """The mapping gives these references as a display name only (DICOM person names, no
    resource to point at): such a reference is there all the same."""
    everything = _ids(client, "/fhir/ImagingStudy?_count=100")
    assert _ids(client, f"/fhir/ImagingStudy?{name}:missing=false") == {"1.3.3"}
    assert _ids(client, f"/fhir/ImagingStudy?{name}:missing=true&_count=100") == everything - {"1.3.3"}
