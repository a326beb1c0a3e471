"""Incremental polls by date window, and on-demand fetching of a searched patient, against a
real Orthanc (reached through the fault proxy of faults.py where a test needs to count the
archive's requests or make it slow)."""

from __future__ import annotations

import datetime as dt
import time

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from app.store.repository import Store
from app.sync import sync_incremental, sync_source
from app.web import create_app
from testbed.orthanc import OrthancServer
from tests.support.faults import FaultProxy

pytestmark = pytest.mark.orthanc


def _today_study(tmp_path, name: str, template: str = "MR_small.dcm", **changes) -> tuple[str, str]:
    """A copy of a real file as a new study dated today: (path, StudyInstanceUID)."""
    ds = pydicom.dcmread(get_testdata_file(template))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDate = dt.date.today().strftime("%Y%m%d")
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path)
    return str(path), str(ds.StudyInstanceUID)


@pytest.fixture
def pacs():
    with OrthancServer() as server:
        yield server


def _served(client, uid) -> bool:
    return client.get(f"/fhir/ImagingStudy/{uid}").status_code == 200


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_date_window_poll_finds_new_studies_and_full_reconciliation_finds_deletions(
    pacs, tmp_path, open_config, store_url, kind
):
    pacs.upload([get_testdata_file("CT_small.dcm")])
    reach = (
        {"type": "dicomweb", "url": pacs.dicomweb_url}
        if kind == "dicomweb"
        else {"type": "dimse", "host": "127.0.0.1", "port": pacs.dicom_port, "called_aet": pacs.aet}
    )
    config = open_config(store_url, sources=[{"name": "pacs", "timezone": "UTC", "full_every": 3600, **reach}])
    src = config.sources[0]
    store = Store.from_config(config)
    client = create_app(config, store).test_client()
    source = src.open()
    first = sync_incremental(store, src, source)  # nothing synced yet: a full sync
    assert first.new == 1 and store.sync_state.get("pacs").last_full is not None
    path, uid = _today_study(tmp_path, "new.dcm")
    pacs.upload([path])
    poll = sync_incremental(store, src, source)  # a date window from the last poll's day
    assert (poll.new, poll.unchanged, poll.deleted) == (1, 0, 0)  # the old CT study is outside the window
    assert _served(client, uid)

    ct_uid = str(pydicom.dcmread(get_testdata_file("CT_small.dcm")).StudyInstanceUID)
    orthanc_id = next(s["ID"] for s in pacs.studies() if s["MainDicomTags"]["StudyInstanceUID"] == ct_uid)
    pacs.delete(f"/studies/{orthanc_id}")
    assert sync_incremental(store, src, source).deleted == 0  # a window poll cannot see deletions
    assert _served(client, ct_uid)
    store.sync_state.update("pacs", last_full=0)  # the reconciliation falls due
    assert sync_incremental(store, src, source).deleted == 1
    assert client.get(f"/fhir/ImagingStudy/{ct_uid}").status_code == 410
    store.close()


def _patient_search(client, patient_id):
    return client.get(f"/fhir/ImagingStudy?patient.identifier=urn:imaging-facade:source:pacs|{patient_id}")


def test_on_demand_fetches_a_patient_the_sync_has_not_reached(pacs, tmp_path, open_config, sqlite_url):
    path, uid = _today_study(tmp_path, "s.dcm", PatientID="OD-1")
    pacs.upload([path])
    with FaultProxy(pacs.url) as proxy:
        config = open_config(
            sqlite_url,
            sources=[
                {
                    "name": "pacs",
                    "type": "dicomweb",
                    "url": proxy.url + "/dicom-web",
                    "timezone": "UTC",
                    "on_demand": {"max_age": 60, "deadline": 10},
                }
            ],
        )
        store = Store.from_config(config)
        client = create_app(config, store).test_client()
        response = _patient_search(client, "OD-1")  # never synced: asked of the archive first
        assert response.status_code == 200
        assert [e["resource"]["id"] for e in response.get_json()["entry"]] == [uid]
        asked = proxy.requests
        assert _patient_search(client, "OD-1").get_json()["total"] == 1
        assert proxy.requests == asked  # fetched less than max_age ago: not asked again
        assert _patient_search(client, "NOBODY").get_json()["total"] == 0
        assert proxy.requests > asked  # another patient is asked for
        # the same patient by its FHIR id: the stored Patient's identifier is asked for
        patient_ref = client.get(f"/fhir/ImagingStudy/{uid}").get_json()["subject"]["reference"]
        more, more_uid = _today_study(tmp_path, "s2.dcm", PatientID="OD-1")
        pacs.upload([more])
        with store.engine.begin() as conn:  # the patient's data grows old
            conn.exec_driver_sql("UPDATE patient_fetch SET fetched = 0")
        found = client.get(f"/fhir/ImagingStudy?patient={patient_ref}").get_json()
        assert sorted(e["resource"]["id"] for e in found["entry"]) == sorted([uid, more_uid])
        store.close()


def test_on_demand_past_the_deadline_is_503_with_retry_after(pacs, tmp_path, open_config, sqlite_url):
    path, uid = _today_study(tmp_path, "s.dcm", PatientID="OD-2")
    pacs.upload([path])
    with FaultProxy(pacs.url) as proxy:
        config = open_config(
            sqlite_url,
            sources=[
                {
                    "name": "pacs",
                    "type": "dicomweb",
                    "url": proxy.url + "/dicom-web",
                    "timezone": "UTC",
                    "timeout": 10,
                    "on_demand": {"max_age": 60, "deadline": 0.5},
                }
            ],
        )
        store = Store.from_config(config)
        client = create_app(config, store).test_client()
        proxy.hang(2)  # the archive is slow
        response = _patient_search(client, "OD-2")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.get_json()["issue"][0]["code"] == "transient"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not _served(client, uid):
            time.sleep(0.2)  # the fetch goes on in the background
        proxy.hang(0)
        again = _patient_search(client, "OD-2")
        assert again.status_code == 200 and [e["resource"]["id"] for e in again.get_json()["entry"]] == [uid]
        store.close()


def test_on_demand_archive_down_answers_from_the_store(tmp_path, open_config, sqlite_url, pacs):
    path, uid = _today_study(tmp_path, "s.dcm", PatientID="OD-3")
    pacs.upload([path])
    config = open_config(
        sqlite_url,
        sources=[
            {
                "name": "pacs",
                "type": "dicomweb",
                "url": pacs.dicomweb_url,
                "timezone": "UTC",
                "timeout": 1,
                "on_demand": {"max_age": 0, "deadline": 5},
            }
        ],
    )
    store = Store.from_config(config)
    assert sync_source(store, config.sources[0]).new == 1
    client = create_app(config, store).test_client()
    pacs.halt()
    response = _patient_search(client, "OD-3")
    assert response.status_code == 200 and response.get_json()["total"] == 1
    store.close()


def test_change_feed_poll_sees_new_grown_and_deleted_studies(tmp_path, open_config, store_url, monkeypatch):
    import app.sync.run

    with OrthancServer(extra_config={"StableAge": 1}) as pacs:
        pacs.upload([get_testdata_file("CT_small.dcm")])
        config = open_config(
            store_url,
            sources=[
                {"name": "pacs", "type": "dicomweb", "url": pacs.dicomweb_url, "timezone": "UTC", "changes": "orthanc"}
            ],
        )
        src = config.sources[0]
        assert src.poll_interval == 1.0  # a change feed is polled often by default
        store = Store.from_config(config)
        client = create_app(config, store).test_client()
        source = src.open()
        assert sync_incremental(store, src, source).new == 1  # first a full listing
        seq = store.sync_state.get("pacs").cursor

        def poll_until(check, timeout=20.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                summary = sync_incremental(store, src, source)
                assert summary.error is None
                if check(summary):
                    return summary
                time.sleep(0.3)
            raise AssertionError("the change never arrived")

        path, uid = _today_study(tmp_path, "new.dcm", template="CT_small.dcm", StudyDate="20010101")
        pacs.upload([path])  # an old date: a date window would not see it, the feed does
        poll_until(lambda s: s.new == 1)
        assert _served(client, uid) and store.sync_state.get("pacs").cursor != seq

        grown = pydicom.dcmread(path)
        grown.SeriesInstanceUID, grown.SOPInstanceUID = generate_uid(), generate_uid()
        grown.file_meta.MediaStorageSOPInstanceUID = grown.SOPInstanceUID
        grown.save_as(tmp_path / "grown.dcm")
        pacs.upload([str(tmp_path / "grown.dcm")])
        poll_until(lambda s: s.updated == 1)
        assert client.get(f"/fhir/ImagingStudy/{uid}").get_json()["numberOfSeries"] == 2

        monkeypatch.setattr(app.sync.run, "DELETION_CHECK_EVERY", 0.0)
        orthanc_id = next(s["ID"] for s in pacs.studies() if s["MainDicomTags"]["StudyInstanceUID"] == uid)
        pacs.delete(f"/studies/{orthanc_id}")
        poll_until(lambda s: s.deleted == 1)
        assert client.get(f"/fhir/ImagingStudy/{uid}").status_code == 410
        store.close()
