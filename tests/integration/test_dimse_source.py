"""DimseSource (C-FIND, Study Root) against a real Orthanc holding pydicom's test files.

Expectations come from Orthanc's own REST API, from the DICOMweb source over the same
Orthanc, and from dcmtk's `findscu` (an independent DICOM stack), never from DimseSource.
"""

from __future__ import annotations

import logging
import socket
import warnings
from collections import defaultdict

import pydicom
import pytest
from pydicom.data import get_testdata_files
from sqlalchemy import select

from app.sources.base import StudyFailure, StudyRecord
from app.sources.dicomweb import DicomwebSource
from app.sources.dimse import DimseSource, _DimseError
from app.sources.errors import SourceError
from app.store.repository import Store
from app.store.tables import Resource
from app.sync import sync_source
from testbed.orthanc import OrthancServer, assert_whole_archive, free_port, orthanc_tree, source_tree
from tests.support.dcmtk import findscu

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk]

CALLING_AET = "FACADE"


def dimse(server, **kwargs) -> DimseSource:
    return DimseSource("old-pacs", "127.0.0.1", server.dicom_port, server.aet, calling_aet=CALLING_AET, **kwargs)


@pytest.fixture(scope="module")
def dimse_run(orthanc):
    """One full iteration of the archive: (source, items)."""
    source = dimse(orthanc)
    items = list(source.iter_studies())
    return source, items


# -- the whole archive -------------------------------------------------------------------
def test_every_study_orthanc_holds_comes_out_once_with_its_series_and_instances(orthanc, dimse_run):
    expected = orthanc_tree(orthanc)
    assert len(expected) >= 25  # the fixture really loaded pydicom's test files
    source, items = dimse_run
    assert_whole_archive(source, items, expected)
    # Orthanc holds some study UIDs under two Patient IDs and answers them twice
    assert source.stats["duplicates"] >= 1
    assert source.stats["associations"] == 1 + len(items)  # the listing, then one per study


def test_same_studies_series_and_instances_as_dicomweb(orthanc, dimse_run):
    _source, items = dimse_run
    qido = list(DicomwebSource("pacs", orthanc.dicomweb_url).iter_studies())
    assert source_tree(items) == source_tree(qido)
    by_uid = {r.uid: r for r in qido}
    for record in items:  # the query-only attributes agree too
        web = by_uid[record.uid]
        for key in ("00100020", "00080061", "00201206", "00201208", "00080020"):
            assert record.attrs.get(key, {}).get("Value") == web.attrs.get(key, {}).get("Value"), (record.uid, key)
        web_series = {s.attrs["0020000E"]["Value"][0]: s.attrs for s in web.series}
        for series in record.series:
            other = web_series[series.attrs["0020000E"]["Value"][0]]
            for key in ("00080060", "00201209"):
                assert series.attrs.get(key, {}).get("Value") == other.get(key, {}).get("Value")


def test_findscu_sees_the_same_studies(orthanc, dimse_run, tmp_path):
    answers, _log = findscu(
        orthanc,
        tmp_path / "findscu",
        "PatientID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
        "OtherPatientIDsSequence",
        calling_aet=CALLING_AET,
    )
    _source, items = dimse_run
    assert {a.StudyInstanceUID for a in answers} == {r.uid for r in items}
    by_uid = {r.uid: r.attrs for r in items}
    for answer in answers:  # dcmtk and pynetdicom read the same answers
        attrs = by_uid[answer.StudyInstanceUID]
        assert attrs["00201208"]["Value"] == [int(answer.NumberOfStudyRelatedInstances)]
        modalities = answer.get("ModalitiesInStudy") or []
        modalities = [modalities] if isinstance(modalities, str) else list(modalities)
        assert attrs["00080061"].get("Value", []) == modalities
        if answer.get("OtherPatientIDsSequence"):
            ids = [item.PatientID for item in answer.OtherPatientIDsSequence]
            assert [i["00100020"]["Value"][0] for i in attrs["00101002"]["Value"]] == ids


def test_sequences_come_back_from_c_find(orthanc, dimse_run):
    """Orthanc's C-FIND answers the sequences its QIDO-RS leaves out."""
    held = set(orthanc_tree(orthanc))
    with_other_ids = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in get_testdata_files():
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                if ds.get("OtherPatientIDsSequence") and ds.get("StudyInstanceUID") in held:
                    with_other_ids[ds.StudyInstanceUID] = ds
            except Exception:  # noqa: BLE001 - not every test file is DICOM
                continue
    assert with_other_ids, "pydicom's test files hold an OtherPatientIDsSequence"
    _source, items = dimse_run
    by_uid = {r.uid: r for r in items}
    for uid, ds in with_other_ids.items():
        answered = by_uid[uid].attrs["00101002"]
        assert answered["vr"] == "SQ"
        assert [i["00100020"]["Value"][0] for i in answered["Value"]] == [
            item.PatientID for item in ds.OtherPatientIDsSequence
        ]


def test_total_is_known_after_listing_and_iteration_uses_that_listing(orthanc):
    source = dimse(orthanc)
    total = source.total()
    assert source.stats["requests"] == 1
    items = iter(source.iter_studies())
    next(items)
    assert source.total() == total
    assert source.stats["requests"] > 1
    items.close()


# -- C-ECHO ------------------------------------------------------------------------------
def test_echo_succeeds(orthanc):
    source = dimse(orthanc)
    assert source.echo() is None
    assert source.stats["associations"] == 1


def test_echo_on_a_closed_port_says_it_cannot_connect():
    source = DimseSource("old-pacs", "127.0.0.1", free_port(), "PACS", timeout=5)
    with pytest.raises(SourceError, match="C-ECHO failed: cannot connect") as caught:
        source.echo()
    assert caught.value.source == "old-pacs"


# -- failures ----------------------------------------------------------------------------
def test_wrong_port_raises_source_error_naming_the_source():
    port = free_port()
    source = DimseSource("old-pacs", "127.0.0.1", port, "PACS", retries=1, backoff=0.01, timeout=5)
    with pytest.raises(SourceError) as caught:
        list(source.iter_studies())
    message = str(caught.value)
    assert "'old-pacs'" in message and f"127.0.0.1:{port} (PACS)" in message
    assert "cannot list studies: cannot connect" in message
    assert caught.value.source == "old-pacs"
    assert source.stats["associations"] == 2  # one retry
    assert source.stats["requests"] == 0


def test_archive_that_never_answers_times_out():
    with socket.socket() as silent:  # accepts the connection, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        source = DimseSource(
            "old-pacs", "127.0.0.1", silent.getsockname()[1], "PACS", timeout=0.5, retries=1, backoff=0.01
        )
        with pytest.raises(SourceError, match=r"'old-pacs'.*not answered within 0.5s"):
            source.total()
    assert source.stats["associations"] == 2


def test_wrong_called_aet_is_rejected_and_not_retried(orthanc):
    source = DimseSource("old-pacs", "127.0.0.1", orthanc.dicom_port, "NOT-ORTHANC", backoff=0.01)
    with pytest.raises(SourceError) as caught:
        source.total()
    message = str(caught.value)
    assert "'old-pacs'" in message and "(NOT-ORTHANC)" in message
    assert "association rejected (Rejected Permanent" in message
    assert "Called AE title not recognised" in message
    assert source.stats["associations"] == 1  # a permanent rejection is not retried
    with pytest.raises(SourceError, match="C-ECHO failed: association rejected"):
        source.echo()


def test_a_rejection_is_reported_as_one_however_fast_the_archive_hangs_up(orthanc):
    """Orthanc rejects an unknown called AE and closes the connection at once. pynetdicom's
    requestor sometimes finds the connection closed before it reads the answer and calls the
    association aborted: about one C-ECHO in ten here, before the rejection was read as it
    arrived. Over 100 of them, the chance that the old reading reports them all right is
    below one in 10,000."""
    source = DimseSource("old-pacs", "127.0.0.1", orthanc.dicom_port, "NOT-ORTHANC", backoff=0.01)
    reasons = set()
    for _ in range(100):
        with pytest.raises(SourceError) as caught:
            source.echo()
        reasons.add(str(caught.value).split("): ", 1)[1])
    assert reasons == {
        "C-ECHO failed: association rejected (Rejected Permanent, Service User: Called AE title not recognised)"
    }


@pytest.fixture(scope="module")
def closed_orthanc():
    """An Orthanc that answers C-FIND only from AEs it knows (its default): ours is not one."""
    with OrthancServer(extra_config={"DicomAlwaysAllowFind": False}) as server:
        yield server


def test_archive_refusing_our_queries_raises_source_error(closed_orthanc):
    source = dimse(closed_orthanc, retries=1, backoff=0.01)
    with pytest.raises(SourceError) as caught:
        list(source.iter_studies())
    assert "'old-pacs'" in str(caught.value)
    assert "cannot list studies: association aborted" in str(caught.value)
    assert source.stats["requests"] == 2 and source.stats["retries"] == 1


def test_a_study_whose_association_aborts_fails_alone_and_the_next_recovers(orthanc, caplog):
    uids = sorted(orthanc_tree(orthanc))
    broken, flaky = uids[0], uids[1]
    source = dimse(orthanc, backoff=0.01)
    real = source._run_find
    aborted = defaultdict(int)

    def run_find(assoc, identifier):
        uid = identifier.get("StudyInstanceUID")
        if identifier.QueryRetrieveLevel == "SERIES" and (uid == broken or (uid == flaky and not aborted[uid])):
            aborted[uid] += 1
            assoc.abort()  # a real A-ABORT: the query then runs on a dead association
        return real(assoc, identifier)

    source._run_find = run_find
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="pynetdicom")
    items = list(source.iter_studies())

    failures = {i.uid: i for i in items if isinstance(i, StudyFailure)}
    records = {i.uid: i for i in items if isinstance(i, StudyRecord)}
    assert set(failures) == {broken}
    assert failures[broken].reason.startswith("cannot read series/instances: association")
    assert failures[broken].location == f"127.0.0.1:{orthanc.dicom_port} ({orthanc.aet}) study {broken}"
    assert set(records) == set(uids) - {broken}  # the iteration went on
    assert source_tree([records[flaky]]) == {flaky: orthanc_tree(orthanc)[flaky]}
    assert aborted[broken] == 3 and aborted[flaky] == 1  # retries=2 by default
    assert source.stats["failed"] == 1 and source.stats["retries"] == 3
    # no patient data in any log line, ours or pynetdicom's
    names = {p["MainDicomTags"].get("PatientName") for p in orthanc.get("/patients", expand="")}
    names = {n for n in names if n and len(n) > 3}
    assert names and caplog.text
    for name in names:
        assert name not in caplog.text


def test_archive_refusing_sequence_keys_is_asked_again_without_them(orthanc):
    source = dimse(orthanc)
    real = source._run_find
    refused = []

    def run_find(assoc, identifier):
        if any(element.VR == "SQ" for element in identifier):
            refused.append(identifier.QueryRetrieveLevel)
            raise _DimseError("C-FIND answered failure status 0xC000", transient=False, status=0xC000)
        return real(assoc, identifier)

    source._run_find = run_find
    total = source.total()
    records = [r for r, _ in zip(source.iter_studies(), range(total), strict=False)]
    assert len(records) == total and all(isinstance(r, StudyRecord) for r in records)
    assert all("00101002" not in r.attrs for r in records)
    assert refused == ["STUDY", "IMAGE"]  # asked once with sequences per level, then not again
    assert source._no_sequences == {"STUDY", "IMAGE"}


# -- the sync, configured as a user would ---------------------------------------------------
def test_sync_from_a_yaml_config_stores_every_study_and_resync_is_a_no_op(orthanc, open_config, sqlite_url):
    config = open_config(
        sqlite_url,
        sources=[
            {
                "name": "old-pacs",
                "type": "dimse",
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "called_aet": orthanc.aet,
                "calling_aet": CALLING_AET,
                "timezone": "America/Chicago",
            }
        ],
    )
    src = config.sources[0]
    assert isinstance(src.open(), DimseSource)
    store = Store.from_config(config)
    expected = set(orthanc_tree(orthanc))

    summary = sync_source(store, src)

    assert summary.error is None
    assert store.quarantine.entries("old-pacs") == []
    assert (summary.new, summary.failed) == (len(expected), 0)
    with store.engine.connect() as conn:
        stored = {row.id for row in conn.execute(select(Resource.id).where(Resource.rtype == "ImagingStudy"))}
    assert stored == expected  # a study UID is its ImagingStudy id
    assert summary.source_stats["studies"] == len(expected)

    again = sync_source(store, src)
    assert again.error is None
    assert (again.new, again.updated, again.failed) == (0, 0, 0)
    assert again.unchanged == len(expected)
    store.close()
