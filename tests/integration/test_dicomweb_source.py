"""DicomwebSource against a real Orthanc (DICOMweb plugin) holding pydicom's test files.

Expectations come from Orthanc's own REST API (/studies, /series, /instances with their
MainDicomTags), not from QIDO-RS.
"""

from __future__ import annotations

import copy
import io
from collections import defaultdict

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from requests.adapters import HTTPAdapter

from app.sources.base import StudyFailure, StudyRecord
from app.sources.dicomweb import DicomwebSource
from app.sources.errors import SourceError
from testbed.orthanc import OrthancServer, assert_whole_archive, free_port, orthanc_tree, source_tree

pytestmark = pytest.mark.orthanc


# -- the whole archive -------------------------------------------------------------------
def test_every_study_orthanc_holds_comes_out_once_with_its_series_and_instances(orthanc):
    expected = orthanc_tree(orthanc)
    assert len(expected) >= 25  # the fixture really loaded pydicom's test files

    source = DicomwebSource("pacs", orthanc.dicomweb_url)
    items = list(source.iter_studies())
    assert_whole_archive(source, items, expected)


def test_study_attributes_are_orthancs_answers_with_query_only_counts(orthanc):
    by_uid = {}
    for study in orthanc.get("/studies", expand=""):
        by_uid.setdefault(study["MainDicomTags"]["StudyInstanceUID"], study)
    records = [r for r in DicomwebSource("pacs", orthanc.dicomweb_url).iter_studies()]
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    record = next(r for r in records if r.uid == ct.StudyInstanceUID)

    assert record.attrs["0020000D"] == {"vr": "UI", "Value": [ct.StudyInstanceUID]}
    assert record.attrs["00100020"]["Value"] == [by_uid[record.uid]["PatientMainDicomTags"]["PatientID"]]
    # Orthanc answers the query-only attributes at study and series level
    assert record.attrs["00080061"]["Value"] == ["CT"]
    assert record.attrs["00201206"]["Value"] == [1]
    assert record.attrs["00201208"]["Value"] == [1]
    assert record.series[0].attrs["00201209"]["Value"] == [1]
    assert record.series[0].instances[0]["00080016"]["Value"] == [ct.SOPClassUID]
    # the Host header carries the port, so the archive's RetrieveURL points back to it
    assert record.attrs["00081190"]["Value"] == [f"{orthanc.dicomweb_url}/studies/{record.uid}"]


def test_small_pages_give_the_same_studies_as_one_big_page(orthanc):
    big = DicomwebSource("pacs", orthanc.dicomweb_url, page_size=1000)
    small = DicomwebSource("pacs", orthanc.dicomweb_url, page_size=2)
    big_items = list(big.iter_studies())
    small_items = list(small.iter_studies())
    exact = DicomwebSource("pacs", orthanc.dicomweb_url, page_size=len(big_items))

    assert small_items == big_items
    assert list(exact.iter_studies()) == big_items  # a full last page, then an empty one
    assert small.total() == big.total() == len(big_items)
    assert small.stats["requests"] > big.stats["requests"] + len(big_items) // 2


def test_total_is_known_after_listing_and_iteration_uses_that_listing(orthanc):
    source = DicomwebSource("pacs", orthanc.dicomweb_url)
    total = source.total()
    requests_after_listing = source.stats["requests"]
    assert requests_after_listing == 1
    items = iter(source.iter_studies())
    next(items)
    assert source.total() == total  # no second listing mid-iteration
    assert sum(1 for _ in items) + 1 == total


# -- failures ----------------------------------------------------------------------------
def test_unreachable_archive_raises_source_error_naming_source_and_url():
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    source = DicomwebSource("pacs-down", url, username="bob", password="pa55word", retries=1, backoff=0.01)
    with pytest.raises(SourceError) as caught:
        list(source.iter_studies())
    message = str(caught.value)
    assert "pacs-down" in message and url in message
    assert "pa55word" not in message
    assert caught.value.source == "pacs-down"
    assert source.stats["requests"] == 2  # one retry


class ScriptedAdapter(HTTPAdapter):
    """Real HTTP, except scripted answers for URLs containing a given text."""

    def __init__(self, script: dict[str, list]):
        super().__init__()
        self.script = script
        self.calls = defaultdict(int)

    def send(self, request, **kwargs):
        for needle, answers in self.script.items():
            if needle in request.url and answers:
                status, body = answers.pop(0)
                self.calls[needle] += 1
                if status is None:
                    break  # pass through once
                response = requests.Response()
                response.status_code = status
                response._content = body
                response.headers["Content-Type"] = "application/dicom+json"
                response.url = request.url
                response.request = request
                return response
        return super().send(request, **kwargs)


def test_a_study_whose_series_cannot_be_read_fails_alone(orthanc):
    uids = sorted(orthanc_tree(orthanc))
    broken, bad_json, flaky = uids[0], uids[1], uids[2]
    session = requests.Session()
    adapter = ScriptedAdapter(
        {
            f"/studies/{broken}/series": [(500, b"boom")] * 10,
            f"/studies/{bad_json}/series": [(200, b"[{not json")],
            f"/studies/{flaky}/series": [(503, b""), (502, b"")],  # then the real answer
        }
    )
    session.mount("http://", adapter)
    source = DicomwebSource("pacs", orthanc.dicomweb_url, session=session, backoff=0.01)

    items = list(source.iter_studies())

    failures = {i.uid: i for i in items if isinstance(i, StudyFailure)}
    records = {i.uid: i for i in items if isinstance(i, StudyRecord)}
    assert set(failures) == {broken, bad_json}
    assert "HTTP 500" in failures[broken].reason
    assert "JSON" in failures[bad_json].reason
    assert failures[broken].location.endswith(f"/studies/{broken}")
    assert set(records) == set(uids) - {broken, bad_json}  # the iteration went on
    assert source_tree([records[flaky]]) == {flaky: orthanc_tree(orthanc)[flaky]}
    assert adapter.calls[f"/studies/{broken}/series"] == 4  # 500 is retried (3 times), then the study fails
    assert source.stats["retries"] == 2 + 3
    assert source.stats["failed"] == 2


def test_listing_that_keeps_failing_raises_source_error(orthanc):
    session = requests.Session()
    session.mount("http://", ScriptedAdapter({"/dicom-web/studies?": [(503, b"")] * 10}))
    source = DicomwebSource("busy", orthanc.dicomweb_url, session=session, retries=2, backoff=0.01)
    with pytest.raises(SourceError, match=r"'busy'.*HTTP 503"):
        source.total()
    assert source.stats["requests"] == 3


# -- authentication ----------------------------------------------------------------------
def ct_with_other_patient_ids() -> tuple[bytes, str]:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds = copy.deepcopy(ds)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    other = Dataset()
    other.PatientID = "MRN-77"
    other.IssuerOfPatientID = "HOSPITAL-B"
    ds.OtherPatientIDsSequence = Sequence([other])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue(), ds.StudyInstanceUID


@pytest.fixture(scope="module")
def secured_orthanc(tmp_path_factory):
    with OrthancServer(users={"alice": "s3cret-pw"}) as server:
        data, uid = ct_with_other_patient_ids()
        path = tmp_path_factory.mktemp("upload") / "other-ids.dcm"
        path.write_bytes(data)
        answers = server.upload([get_testdata_file("MR_small.dcm"), path])
        assert len(answers) == 2, server.rejected
        server.sequence_study = uid
        yield server


def test_basic_auth_with_the_right_credentials_reads_the_archive(secured_orthanc):
    assert requests.get(secured_orthanc.dicomweb_url + "/studies", timeout=5).status_code == 401
    source = DicomwebSource("secure", secured_orthanc.dicomweb_url, username="alice", password="s3cret-pw")
    records = list(source.iter_studies())
    assert source_tree(records) == orthanc_tree(secured_orthanc)
    assert len(records) == 2


@pytest.mark.parametrize(
    "credentials",
    [
        {"username": "alice", "password": "wrong-pw"},
        {"username": "mallory", "password": "s3cret-pw"},
        {},
        {"token": "not-a-valid-token"},
    ],
)
def test_wrong_or_missing_credentials_raise_source_error(secured_orthanc, credentials):
    source = DicomwebSource("secure", secured_orthanc.dicomweb_url, **credentials)
    with pytest.raises(SourceError) as caught:
        list(source.iter_studies())
    message = str(caught.value)
    assert "'secure'" in message and "401" in message
    for secret in credentials.values():
        if secret not in ("alice", "mallory"):
            assert secret not in message
    assert source.stats["requests"] == 1  # 401 is not retried


def test_sequences_missing_from_qido_are_filled_from_instance_metadata(secured_orthanc):
    auth = {"username": "alice", "password": "s3cret-pw"}
    plain = DicomwebSource("secure", secured_orthanc.dicomweb_url, **auth)
    filled = DicomwebSource("secure", secured_orthanc.dicomweb_url, instance_metadata=True, **auth)
    uid = secured_orthanc.sequence_study

    plain_record = next(r for r in list(plain.iter_studies()) if r.uid == uid)
    filled_record = next(r for r in list(filled.iter_studies()) if r.uid == uid)

    assert "00101002" not in plain_record.attrs  # Orthanc's QIDO leaves sequences out
    other = filled_record.attrs["00101002"]["Value"][0]
    assert other["00100020"]["Value"] == ["MRN-77"]
    assert other["00100021"]["Value"] == ["HOSPITAL-B"]
    assert filled_record.attrs["00201208"] == plain_record.attrs["00201208"]  # QIDO kept
    assert filled.stats["requests"] == plain.stats["requests"] + 2
