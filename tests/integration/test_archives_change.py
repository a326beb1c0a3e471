"""Studies change and leave their archives, and one study can sit in two archives.

Two real Orthanc instances, synced over DICOMweb: the same StudyInstanceUID in both is one
ImagingStudy with both Endpoints; a study that gains a series or whose patient name is
corrected gets a new version; a study deleted from one archive stays while the other holds
it, and once no archive does it leaves search and a read answers 410.
"""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from app.store.repository import Store
from app.sync import sync_source
from app.web import create_app
from testbed.orthanc import OrthancServer

pytestmark = pytest.mark.orthanc


def _file(tmp_path, name: str, template: str, **changes) -> str:
    """A real pydicom test file with some attributes changed, written to tmp_path/name."""
    ds = pydicom.dcmread(get_testdata_file(template))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    if "SOPInstanceUID" in changes:
        ds.file_meta.MediaStorageSOPInstanceUID = changes["SOPInstanceUID"]
    path = tmp_path / name
    ds.save_as(path)
    return str(path)


def _orthanc_study_id(server: OrthancServer, uid: str) -> str:
    return next(s["ID"] for s in server.studies() if s["MainDicomTags"]["StudyInstanceUID"] == uid)


@pytest.fixture
def two_archives():
    with OrthancServer() as a, OrthancServer() as b:
        yield a, b


@pytest.fixture(params=["dicomweb", "dimse"])
def setup(request, two_archives, store_url, open_config):
    """Archive a over DICOMweb; archive b over DICOMweb or DIMSE C-FIND."""
    a, b = two_archives
    second = (
        {"type": "dicomweb", "url": b.dicomweb_url}
        if request.param == "dicomweb"
        else {"type": "dimse", "host": "127.0.0.1", "port": b.dicom_port, "called_aet": b.aet}
    )
    config = open_config(
        store_url,
        sources=[
            {"name": "pacs-a", "type": "dicomweb", "url": a.dicomweb_url, "timezone": "UTC"},
            {"name": "pacs-b", "timezone": "UTC", "wado_url": b.dicomweb_url, **second},
        ],
    )
    store = Store.from_config(config)
    client = create_app(config, store).test_client()
    yield a, b, config, store, client
    store.close()


def _sync(store, config, name):
    summary = sync_source(store, config.source(name))
    assert summary.error is None and summary.failed == 0
    return summary


def test_one_study_in_two_archives(setup, tmp_path):
    a, b, config, store, client = setup
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    extra_series = _file(
        tmp_path,
        "extra.dcm",
        "CT_small.dcm",
        SeriesInstanceUID=generate_uid(),
        SOPInstanceUID=generate_uid(),
        SeriesNumber=99,
    )
    a.upload([get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")])
    b.upload([get_testdata_file("CT_small.dcm"), extra_series])
    _sync(store, config, "pacs-a")
    _sync(store, config, "pacs-b")

    study = client.get(f"/fhir/ImagingStudy/{ct.StudyInstanceUID}").get_json()
    assert sorted(e["reference"] for e in study["endpoint"]) == ["Endpoint/pacs-a", "Endpoint/pacs-b"]
    by_uid = {s["uid"]: s for s in study["series"]}
    assert set(by_uid) == {ct.SeriesInstanceUID, pydicom.dcmread(extra_series).SeriesInstanceUID}
    assert "endpoint" not in by_uid[ct.SeriesInstanceUID]  # both archives hold it
    assert by_uid[pydicom.dcmread(extra_series).SeriesInstanceUID]["endpoint"] == [{"reference": "Endpoint/pacs-b"}]
    assert store.studies.holders(ct.StudyInstanceUID) == ["pacs-a", "pacs-b"]
    bundle = client.get(f"/fhir/ImagingStudy?identifier=urn:oid:{ct.StudyInstanceUID}").get_json()
    assert bundle["total"] == 1  # one resource, not one per archive
    # both archives' Endpoints are reachable from the study
    included = client.get(f"/fhir/ImagingStudy?_id={ct.StudyInstanceUID}&_include=ImagingStudy:endpoint").get_json()
    assert sorted(e["resource"]["id"] for e in included["entry"] if e["search"]["mode"] == "include") == [
        "pacs-a",
        "pacs-b",
    ]

    # deleted from one archive: still served, from the other
    a.delete(f"/studies/{_orthanc_study_id(a, ct.StudyInstanceUID)}")
    summary = _sync(store, config, "pacs-a")
    assert summary.deleted == 1
    study = client.get(f"/fhir/ImagingStudy/{ct.StudyInstanceUID}").get_json()
    assert study["endpoint"] == [{"reference": "Endpoint/pacs-b"}] and study["meta"]["versionId"] == "3"
    assert store.studies.holders(ct.StudyInstanceUID) == ["pacs-b"]

    # deleted from the last archive: gone from search, a read answers 410, history stays
    b.delete(f"/studies/{_orthanc_study_id(b, ct.StudyInstanceUID)}")
    assert _sync(store, config, "pacs-b").deleted == 1
    gone = client.get(f"/fhir/ImagingStudy/{ct.StudyInstanceUID}")
    assert gone.status_code == 410
    assert gone.get_json()["issue"][0]["code"] == "deleted"
    assert client.get(f"/fhir/ImagingStudy?identifier=urn:oid:{ct.StudyInstanceUID}").get_json()["total"] == 0
    assert client.get(f"/fhir/ImagingStudy/{ct.StudyInstanceUID}/_history/1").status_code == 200
    # the CT's patients had no other study: they are gone too
    patient_ids = {e["resource"]["id"] for e in client.get("/fhir/Patient?_count=100").get_json().get("entry", [])}
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    assert [e["resource"]["id"] for e in client.get("/fhir/ImagingStudy").get_json()["entry"]] == [mr.StudyInstanceUID]
    assert len(patient_ids) == 1

    # a study that comes back continues its versions
    b.upload([get_testdata_file("CT_small.dcm")])
    assert _sync(store, config, "pacs-b").new == 1
    back = client.get(f"/fhir/ImagingStudy/{ct.StudyInstanceUID}").get_json()
    assert back["meta"]["versionId"] == "5"  # 1 from a, 2 a+b, 3 b only, 4 deleted, 5 back


def test_new_series_and_corrected_name_make_new_versions(setup, tmp_path):
    a, _b, config, store, client = setup
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    a.upload([get_testdata_file("MR_small.dcm")])
    assert _sync(store, config, "pacs-a").new == 1
    first = client.get(f"/fhir/ImagingStudy/{mr.StudyInstanceUID}").get_json()
    assert first["numberOfSeries"] == 1 and first["meta"]["versionId"] == "1"

    a.upload(
        [
            _file(
                tmp_path,
                "more.dcm",
                "MR_small.dcm",
                SeriesInstanceUID=generate_uid(),
                SOPInstanceUID=generate_uid(),
                SeriesNumber=7,
            )
        ]
    )
    summary = _sync(store, config, "pacs-a")
    assert (summary.updated, summary.new, summary.deleted) == (1, 0, 0)
    second = client.get(f"/fhir/ImagingStudy/{mr.StudyInstanceUID}").get_json()
    assert second["numberOfSeries"] == 2 and second["meta"]["versionId"] == "2"

    # the archive corrects the patient's name (delete and store again, as a PACS merge does)
    patient_ref = second["subject"]["reference"]
    before = client.get(f"/fhir/{patient_ref}").get_json()
    a.delete(f"/studies/{_orthanc_study_id(a, mr.StudyInstanceUID)}")
    a.upload([_file(tmp_path, "renamed.dcm", "MR_small.dcm", PatientName="Corrected^Name")])
    summary = _sync(store, config, "pacs-a")
    assert summary.error is None and summary.deleted == 0
    after = client.get(f"/fhir/{patient_ref}").get_json()
    assert after["name"][0]["family"] == "Corrected" and before["name"] != after["name"]
    assert int(after["meta"]["versionId"]) == int(before["meta"]["versionId"]) + 1
    assert client.get("/fhir/Patient?family=Corrected").get_json()["total"] == 1
