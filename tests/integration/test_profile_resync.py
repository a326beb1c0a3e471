"""Changing a mapping profile and syncing again updates exactly the resources it changes: a
new version of each, served by the API, with the earlier one kept in its history. Real
files (pydicom's test data) in a folder, and a real Orthanc over DICOMweb; SQLite and
PostgreSQL."""

from __future__ import annotations

import shutil
import warnings

import pydicom
import yaml
from pydicom.data import get_testdata_file

from app.config import load_config
from app.store.repository import Store
from app.sync import sync_source
from app.web import create_app
from tests.support.structure_check import profile_problems

FILES = ("CT_small.dcm", "JPEG-lossy.dcm", "MR_small.dcm", "rtplan.dcm")


def _read(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(get_testdata_file(name), stop_before_pixels=True)


def _write_config(tmp_path, store_url, source: dict):
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "store": store_url,
                "security": {"open": True},
                "server": {"base_url": "http://testserver/fhir"},
                "sources": [source],
            },
            sort_keys=False,
        )
    )
    return load_config(path, environ={})


def _study(client, uid):
    response = client.get(f"/fhir/ImagingStudy/{uid}")
    assert response.status_code == 200
    return response.get_json()


def test_a_changed_profile_file_updates_the_affected_studies(tmp_path, store_url):
    archive = tmp_path / "archive"
    archive.mkdir()
    for name in FILES:
        shutil.copyfile(get_testdata_file(name), archive / name)
    ct = _read("CT_small.dcm")
    profile = tmp_path / "profiles" / "site-a.yaml"
    profile.parent.mkdir()
    profile.write_text("description: site A\n")
    source = {"name": "site-a", "type": "folder", "path": str(archive), "profile": "profiles/site-a.yaml"}

    config = _write_config(tmp_path, store_url, source)
    store = Store.from_config(config)
    first = sync_source(store, config.sources[0])
    assert first.error is None and first.new == len(FILES)
    client = create_app(config, store).test_client()
    before = _study(client, ct.StudyInstanceUID)
    assert before["location"] == {"display": ct.InstitutionName}
    assert before["meta"]["versionId"] == "1"

    # 1. the site's name for the institution: only the CT study says that institution
    profile.write_text(f"institution:\n  names:\n    {ct.InstitutionName}: Kennedy Imaging Center\n")
    config = _write_config(tmp_path, store_url, source)
    second = sync_source(store, config.sources[0])
    assert (second.new, second.updated, second.unchanged) == (0, 1, len(FILES) - 1)
    client = create_app(config, store).test_client()
    after = _study(client, ct.StudyInstanceUID)
    assert after["location"] == {"display": "Kennedy Imaging Center"}
    assert after["meta"]["versionId"] == "2"
    old = client.get(f"/fhir/ImagingStudy/{ct.StudyInstanceUID}/_history/1").get_json()
    assert old["location"] == {"display": ct.InstitutionName}

    # 2. the vendor layer, named in the source's profile: GE private attributes as extensions
    profile.write_text(profile.read_text() + "vendor: ge\n")
    config = _write_config(tmp_path, store_url, source)
    third = sync_source(store, config.sources[0])
    assert (third.updated, third.unchanged) == (1, len(FILES) - 1)
    client = create_app(config, store).test_client()
    latest = _study(client, ct.StudyInstanceUID)
    block = ct.private_block(0x0009, "GEMS_IDEN_01")
    assert latest["series"][0]["extension"][0]["valueString"] == block[0x04].value
    assert latest["meta"]["versionId"] == "3"
    assert profile_problems(latest) == []

    # 3. nothing changed: nothing new
    fourth = sync_source(store, config.sources[0])
    assert (fourth.updated, fourth.unchanged) == (0, len(FILES))
    store.close()


def test_a_changed_inline_profile_updates_studies_read_from_orthanc(tmp_path, sqlite_url, orthanc):
    source = {"name": "pacs", "type": "dicomweb", "url": orthanc.dicomweb_url}
    config = _write_config(tmp_path, sqlite_url, source)
    store = Store.from_config(config)
    first = sync_source(store, config.sources[0])
    assert first.error is None and first.new >= 20
    client = create_app(config, store).test_client()
    before = {uid: _study(client, uid) for uid in _uids(client)}
    # the institution name as the archive answers it for some study (Orthanc takes it from
    # the study's first instance)
    name = next(s["location"]["display"] for s in before.values() if "location" in s)
    affected = {uid for uid, s in before.items() if s.get("location", {}).get("display") == name}

    source["profile"] = {
        "institution": {"names": {name.upper(): "Renamed Site"}},
        "endpoint": {"requires_access_token": True},
    }
    config = _write_config(tmp_path, sqlite_url, source)
    second = sync_source(store, config.sources[0])
    assert (second.updated, second.unchanged) == (len(affected), len(before) - len(affected))
    client = create_app(config, store).test_client()
    for uid, old in before.items():
        study = _study(client, uid)
        if uid in affected:
            assert study["location"] == {"display": "Renamed Site"} and study["meta"]["versionId"] == "2"
        else:
            assert study == old  # same version, same lastUpdated
    endpoint = client.get("/fhir/Endpoint/pacs").get_json()
    assert endpoint["extension"][0]["valueBoolean"] is True and endpoint["meta"]["versionId"] == "2"
    store.close()


def _uids(client):
    body = client.get("/fhir/ImagingStudy?_count=1000&_elements=id").get_json()
    return [entry["resource"]["id"] for entry in body.get("entry", [])]


def test_private_attributes_from_orthanc_instance_metadata(tmp_path, orthanc):
    """QIDO-RS never returns private attributes; with instance_metadata the study-level rules
    of a vendor profile read them from the first instance's WADO-RS metadata."""
    ct = _read("CT_small.dcm")
    suite = ct.private_block(0x0009, "GEMS_IDEN_01")[0x02].value
    results = {}
    for flag in (False, True):
        source = {
            "name": f"pacs{int(flag)}",
            "type": "dicomweb",
            "url": orthanc.dicomweb_url,
            "vendor": "ge",
            "instance_metadata": flag,
        }
        # a store each: one study in two archives would be served as their merge
        config = _write_config(tmp_path, f"sqlite:///{tmp_path / f'facade{int(flag)}.db'}", source)
        store = Store.from_config(config)
        sync_source(store, config.sources[0])
        client = create_app(config, store).test_client()
        results[flag] = _study(client, ct.StudyInstanceUID).get("extension")
        store.close()
    assert results[False] is None
    assert results[True] == [
        {"url": "http://imaging-facade.org/fhir/StructureDefinition/ge-suite-id", "valueString": suite}
    ]
