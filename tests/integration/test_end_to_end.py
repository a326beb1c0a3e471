"""The whole path: a real archive -> sync -> store -> FHIR search, on SQLite and PostgreSQL.

Expectations come from the archive itself (Orthanc's own REST API) or from an independent
pydicom read of the files, never from the facade's output.
"""

from __future__ import annotations

import shutil
import warnings
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

from app.store.repository import Store
from app.store.studies import study_subject
from app.sync import sync_source
from app.web import create_app
from tests.support.bundles import next_link
from tests.support.structure_check import profile_problems


def _synced(config):
    """A store synced once from the config's only source: (store, summary, API test client)."""
    store = Store.from_config(config)
    summary = sync_source(store, config.sources[0])
    return store, summary, create_app(config, store).test_client()


def _every_page(client, url):
    entries = []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        entries += body.get("entry", [])
        url = next_link(body)
    return entries


def _all(client, rtype):
    return {e["resource"]["id"]: e["resource"] for e in _every_page(client, f"/fhir/{rtype}?_count=7")}


def _snapshot(store):
    """(type, id) -> (versionId, lastUpdated) of everything stored."""
    from sqlalchemy import select

    from app.store.tables import Resource

    with store.engine.connect() as conn:
        return {
            (r.rtype, r.id): (r.version, r.last_updated)
            for r in conn.execute(select(Resource.rtype, Resource.id, Resource.version, Resource.last_updated))
        }


def _check_emitted(client, assert_valid_r4):
    """Every resource the API serves validates against the R4 models and meets the profile it
    claims (fhir_profiles/structure); references resolve."""
    studies, patients, endpoints = _all(client, "ImagingStudy"), _all(client, "Patient"), _all(client, "Endpoint")
    for resource in [*studies.values(), *patients.values(), *endpoints.values()]:
        assert_valid_r4(resource)
        assert profile_problems(resource) == [], (resource["resourceType"], resource["id"])
    for study in studies.values():
        assert study["subject"]["reference"].removeprefix("Patient/") in patients
        assert {e["reference"].removeprefix("Endpoint/") for e in study["endpoint"]} <= set(endpoints)
    return studies, patients, endpoints


# ------------------------------------------------------------------ folder source


def _independent_folder_view(root: Path):
    """study UID -> {series UID -> set of SOP Instance UIDs}, read with plain pydicom."""
    view = defaultdict(lambda: defaultdict(set))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                study, series, sop = ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"), ds.get("SOPInstanceUID")
            except Exception:  # noqa: BLE001 - not DICOM, or not readable: the facade must skip it too
                continue
            if study and series and sop and ds.get("SOPClassUID") and "DirectoryRecordSequence" not in ds:
                view[str(study)][str(series)].add(str(sop))
    return view


@pytest.fixture
def sample_folder(tmp_path):
    root = tmp_path / "archive"
    base = None
    for name in get_testdata_files():
        path = Path(name)
        if not path.is_file():
            continue
        base = base or next(p for p in path.parents if p.name == "test_files")
        dest = root / path.relative_to(base)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    (root / "notes.txt").write_text("not a DICOM file")
    return root


@pytest.mark.slow
def test_folder_sync_serves_every_study(store_url, open_config, sample_folder, valid_r4):
    config = open_config(store_url, sources=[{"name": "sample", "type": "folder", "path": str(sample_folder)}])
    store, summary, client = _synced(config)
    assert summary.error is None
    studies, patients, endpoints = _check_emitted(client, valid_r4)

    expected = _independent_folder_view(sample_folder)
    quarantined = {q.study_uid for q in store.quarantine.entries("sample")}
    assert set(studies) <= set(expected)
    assert set(expected) - set(studies) <= quarantined  # nothing silently lost
    assert len(studies) >= 25 and summary.new == len(studies)
    for uid, study in studies.items():
        series = {s["uid"]: s for s in study["series"]}
        assert set(series) == set(expected[uid]), uid
        assert study["numberOfSeries"] == len(expected[uid])
        assert study["numberOfInstances"] == sum(len(v) for v in expected[uid].values())
        for series_uid, sops in expected[uid].items():
            assert {i["uid"] for i in series[series_uid]["instance"]} == sops
    assert summary.source_stats["skipped"] >= 1  # notes.txt
    assert set(endpoints) == {"sample"}

    before = _snapshot(store)
    again = sync_source(store, config.sources[0])
    assert (again.new, again.updated, again.unchanged) == (0, 0, summary.new)
    assert _snapshot(store) == before  # same ids, versions and lastUpdated
    store.close()


@pytest.mark.slow
def test_folder_sync_finds_a_patients_studies(open_config, sqlite_url, sample_folder):
    config = open_config(sqlite_url, sources=[{"name": "sample", "type": "folder", "path": str(sample_folder)}])
    store, _, client = _synced(config)
    ct = pydicom.dcmread(sample_folder / "CT_small.dcm", stop_before_pixels=True)
    system = config.sources[0].patient_id_system
    found = _every_page(client, f"/fhir/Patient?identifier={system}|{ct.PatientID}")
    assert len(found) == 1
    patient_id = found[0]["resource"]["id"]
    by_patient = _every_page(client, f"/fhir/ImagingStudy?patient={patient_id}&_include=ImagingStudy:patient")
    matches = {e["resource"]["id"] for e in by_patient if e["search"]["mode"] == "match"}
    assert ct.StudyInstanceUID in matches
    assert all(
        e["resource"]["subject"]["reference"] == f"Patient/{patient_id}"
        for e in by_patient
        if e["search"]["mode"] == "match"
    )
    assert [e["resource"]["id"] for e in by_patient if e["search"]["mode"] == "include"] == [patient_id]
    store.close()


@pytest.mark.slow
def test_the_audit_reads_each_stored_studys_patient_as_the_index_has_it(store_url, open_config, sample_folder):
    """The audit names the patient of a served study from its stored JSON, without a query:
    for every study synced from real files, that is the patient its search index holds."""
    config = open_config(store_url, sources=[{"name": "sample", "type": "folder", "path": str(sample_folder)}])
    store, _, client = _synced(config)
    reader = client.application.extensions["imaging-facade"].reader
    rows = reader.all("SELECT id, content FROM resource WHERE rtype = ?", ["ImagingStudy"])
    indexed = dict(
        reader.all(
            "SELECT rid, target_id FROM idx_reference WHERE rtype = ? AND param = ? AND target_type = ?",
            ["ImagingStudy", "patient", "Patient"],
        )
    )
    store.close()
    assert len(rows) >= 25
    assert {rid: study_subject(bytes(content)) for rid, content in rows} == indexed


# ------------------------------------------------------------------ DICOMweb source (real Orthanc)


def _orthanc_view(orthanc):
    """study UID -> (Patient ID, {series UID: instance count}), from Orthanc's REST API."""
    view: dict = {}
    for study in orthanc.studies():
        uid = study["MainDicomTags"]["StudyInstanceUID"]
        patient_id = study["PatientMainDicomTags"].get("PatientID", "")
        series = view.setdefault(uid, (patient_id.strip(), {}))[1]
        for series_id in study["Series"]:
            info = orthanc.get(f"/series/{series_id}")
            series[info["MainDicomTags"]["SeriesInstanceUID"]] = len(info["Instances"])
    return view


def test_dicomweb_sync_matches_orthanc(store_url, open_config, orthanc, valid_r4):
    config = open_config(
        store_url,
        sources=[{"name": "pacs", "type": "dicomweb", "url": orthanc.dicomweb_url, "timezone": "Europe/Berlin"}],
    )
    store, summary, client = _synced(config)
    assert summary.error is None
    studies, patients, endpoints = _check_emitted(client, valid_r4)

    expected = _orthanc_view(orthanc)
    quarantined = {q.study_uid for q in store.quarantine.entries("pacs")}
    assert set(studies) | quarantined == set(expected)
    assert len(studies) >= 20
    for uid, study in studies.items():
        patient_id, series = expected[uid]
        assert {s["uid"]: s["numberOfInstances"] for s in study["series"]} == series, uid
        assert study["numberOfSeries"] == len(series)
        assert study["numberOfInstances"] == sum(series.values())
        assert study["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}
        patient = patients[study["subject"]["reference"].removeprefix("Patient/")]
        if patient_id:
            assert patient["identifier"][0]["value"] == patient_id
    assert endpoints["pacs"]["address"] == orthanc.dicomweb_url
    assert endpoints["pacs"]["status"] == "active"

    before = _snapshot(store)
    again = sync_source(store, config.sources[0])
    assert (again.new, again.updated, again.failed) == (0, 0, summary.failed)
    assert _snapshot(store) == before
    store.close()


def test_dicomweb_patient_search_matches_orthanc_grouping(open_config, sqlite_url, orthanc):
    config = open_config(sqlite_url, sources=[{"name": "pacs", "type": "dicomweb", "url": orthanc.dicomweb_url}])
    store, _, client = _synced(config)
    quarantined = {q.study_uid for q in store.quarantine.entries("pacs")}
    system = config.sources[0].patient_id_system
    by_patient_id = defaultdict(set)  # Orthanc's own grouping of studies by Patient ID
    for uid, (patient_id, _series) in _orthanc_view(orthanc).items():
        if patient_id and uid not in quarantined:
            by_patient_id[patient_id].add(uid)
    assert len(by_patient_id) >= 10
    for patient_id, uids in by_patient_id.items():
        patients = _every_page(client, f"/fhir/Patient?identifier={system}|{patient_id}")
        assert len(patients) == 1, patient_id
        fhir_id = patients[0]["resource"]["id"]
        for form in (fhir_id, f"Patient/{fhir_id}"):
            found = {e["resource"]["id"] for e in _every_page(client, f"/fhir/ImagingStudy?patient={form}")}
            assert found == uids, patient_id
    store.close()


def test_dicomweb_instance_metadata_brings_other_patient_ids(open_config, sqlite_url, orthanc):
    """QIDO-RS (Orthanc) never returns sequences; `instance_metadata: true` fills them."""
    from pydicom.data import get_testdata_file

    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    others = sorted(str(item.PatientID) for item in ct.OtherPatientIDsSequence)
    results = {}
    for flag in (False, True):
        config = open_config(
            sqlite_url,
            sources=[
                {"name": f"pacs{int(flag)}", "type": "dicomweb", "url": orthanc.dicomweb_url, "instance_metadata": flag}
            ],
        )
        store, _, client = _synced(config)
        system = config.sources[0].patient_id_system
        patients = _every_page(client, f"/fhir/Patient?identifier={system}|{ct.PatientID}")
        results[flag] = sorted(i["value"] for i in patients[0]["resource"]["identifier"] if i["value"] != ct.PatientID)
        store.close()
    assert results[False] == []
    assert results[True] == others
