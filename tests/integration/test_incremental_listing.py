"""Incremental sync, source side, against real Orthancs: filtered and sliced listings over
DICOMweb and DIMSE, and Orthanc's change feed.

Expectations come from Orthanc's REST API (`/studies` is never capped) and from dcmtk's
`findscu`, never from the sources under test. The capped archive runs with
`LimitFindResults: 3` and `LimitFindInstances: 3`; what Orthanc 1.10 then does:

- QIDO-RS answers at most 4 (the limit + 1) studies, series or instances per query, with no
  Warning header, and `offset` does not get past them;
- C-FIND answers 3 and ends with status 0xFE00 (Cancel) although nobody cancelled.
"""

from __future__ import annotations

import copy
import io
import json
import time
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from requests.adapters import HTTPAdapter

from app.sources.base import StudyFailure, StudyRecord
from app.sources.dicomweb import DicomwebSource
from app.sources.dimse import DimseSource
from app.sources.errors import SourceError
from app.sources.orthanc_changes import (
    ChangeEvent,
    OrthancChanges,
    orthanc_study_id,
    study_id_of,
)
from testbed.orthanc import OrthancServer, assert_whole_archive, free_port, orthanc_tree
from tests.support.dcmtk import findscu

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk]

CAP = 3
CAPPED = {"LimitFindResults": CAP, "LimitFindInstances": CAP}
CALLING_AET = "FACADE"
_BASE = pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def instance(
    study_uid: str,
    series_uid: str,
    *,
    date: str | None = "20240301",
    time_: str = "080000",
    patient: str = "PAT-A",
    modality: str = "CT",
) -> bytes:
    """One CT_small instance moved into the given study and series; `date=None` leaves
    StudyDate out, "" leaves it empty."""
    ds = copy.deepcopy(_BASE)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if date is None:
        del ds.StudyDate
    else:
        ds.StudyDate = date
    ds.StudyTime, ds.PatientID, ds.Modality = time_, patient, modality
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def store(server: OrthancServer, folder: Path, blobs: list[bytes]) -> None:
    paths = []
    for blob in blobs:
        path = folder / f"{len(list(folder.iterdir()))}.dcm"
        path.write_bytes(blob)
        paths.append(path)
    answers = server.upload(paths)
    assert len(answers) == len(paths), server.rejected


def new_study(n_series: int = 1, n_instances: int = 2, **tags) -> tuple[str, list[bytes]]:
    uid = generate_uid()
    blobs = []
    for _ in range(n_series):
        series = generate_uid()
        blobs += [instance(uid, series, **tags) for _ in range(n_instances)]
    return uid, blobs


def rest_studies(server) -> dict[str, dict]:
    """StudyInstanceUID -> {date, patient, id} from Orthanc's own REST API."""
    out = {}
    for study in server.get("/studies", expand=""):
        out[study["MainDicomTags"]["StudyInstanceUID"]] = {
            "date": study["MainDicomTags"].get("StudyDate"),
            "patient": study["PatientMainDicomTags"].get("PatientID"),
            "id": study["ID"],
        }
    return out


# -- a capped archive --------------------------------------------------------------------
#: (StudyDate, PatientID, Modality) of each study: more per date, per patient and in all
#: than the limit of 3, but never more than 2 per (date, patient)
PLAN = [
    ("20240301", "PAT-A", "CT"),
    ("20240301", "PAT-B", "CT"),
    ("20240301", "PAT-C", "MR"),
    ("20240301", "PAT-A", "CT"),
    ("20240302", "PAT-B", "CT"),
    ("20240302", "PAT-C", "CT"),
    ("20240302", "PAT-A", "MR"),
    ("20240303", "PAT-B", "US"),
    ("20240304", "PAT-C", "CT"),
    ("20240304", "PAT-A", "CT"),
    ("20240304", "PAT-B", "MR"),
    ("20240304", "PAT-C", "CT"),
    ("20240304", "PAT-A", "CT"),
    ("20240305", "PAT-B", "MR"),
    ("20240305", "PAT-C", "CT"),
    ("", "PAT-A", "CT"),  # an empty StudyDate
]


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    folder = tmp_path_factory.mktemp("capped")
    with OrthancServer(extra_config=CAPPED) as server:
        blobs = []
        for n, (date, patient, modality) in enumerate(PLAN):
            _uid, more = new_study(
                n_series=2 if n == 0 else 1, date=date, time_=f"{8 + n:02d}1500", patient=patient, modality=modality
            )
            blobs += more
        store(server, folder, blobs)
        assert len(rest_studies(server)) == len(PLAN)
        yield server


def source(kind: str, server, **kwargs):
    if kind == "dicomweb":
        return DicomwebSource("capped", server.dicomweb_url, max_results=CAP, **kwargs)
    return DimseSource("capped", "127.0.0.1", server.dicom_port, server.aet, calling_aet=CALLING_AET, **kwargs)


KINDS = ["dicomweb", "dimse"]


def listed(src, match=None) -> set[str]:
    items = list(src.iter_studies(match))
    assert [i for i in items if isinstance(i, StudyFailure)] == []
    uids = [i.uid for i in items]
    assert len(uids) == len(set(uids))
    return set(uids)


def test_orthanc_caps_an_unsliced_query_silently_over_qido_and_with_cancel_over_c_find(capped, tmp_path):
    response = requests.get(capped.dicomweb_url + "/studies", params={"limit": 100}, timeout=10)
    assert len(response.json()) == CAP + 1 < len(PLAN)
    assert "Warning" not in response.headers
    paged = requests.get(capped.dicomweb_url + "/studies", params={"limit": 100, "offset": CAP + 1}, timeout=10)
    assert paged.json() == []  # offset does not reach the studies beyond the limit
    answers, log = findscu(capped, tmp_path / "all", calling_aet=CALLING_AET)
    assert len(answers) == CAP
    assert "Final Find Response (Cancel: MatchingTerminatedDueToCancelRequest)" in log


@pytest.mark.parametrize("kind", KINDS)
def test_sliced_listing_finds_every_study_of_a_capped_archive(capped, kind):
    src = source(kind, capped)
    items = list(src.iter_studies())
    assert_whole_archive(src, items, orthanc_tree(capped))
    assert src.listing_complete, src.listing_gaps
    assert src.stats["listing_queries"] > 1
    empty = next(uid for uid, s in rest_studies(capped).items() if not s["date"])
    assert empty in {i.uid for i in items}  # Orthanc puts "" into the open-lower date slice


def test_findscu_by_date_and_patient_finds_the_same_dated_studies_as_the_sliced_listing(capped, tmp_path):
    truth = rest_studies(capped)
    dated = {uid for uid, s in truth.items() if s["date"]}
    found: set[str] = set()
    for date, patient in sorted({(s["date"], s["patient"]) for s in truth.values() if s["date"]}):
        answers, log = findscu(
            capped, tmp_path / f"{date}-{patient}", f"StudyDate={date}", f"PatientID={patient}", calling_aet=CALLING_AET
        )
        assert 0 < len(answers) < CAP and "Cancel" not in log  # each of these queries is whole
        found |= {a.StudyInstanceUID for a in answers}
    assert found == dated
    assert listed(source("dimse", capped)) - found == set(truth) - dated


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "window, wanted",
    [
        ("20240302-20240304", lambda d: "20240302" <= d <= "20240304"),
        ("20240304", lambda d: d == "20240304"),
        ("20240304-", lambda d: d >= "20240304"),
        # Orthanc compares dates as strings: an empty StudyDate is in every open-lower range
        ("-20240302", lambda d: d <= "20240302"),
    ],
)
def test_a_date_window_lists_exactly_the_studies_of_that_window(capped, kind, window, wanted):
    expected = {uid for uid, s in rest_studies(capped).items() if s["date"] is not None and wanted(s["date"])}
    assert len(expected) > CAP
    src = source(kind, capped)
    assert listed(src, {"StudyDate": window}) == expected
    assert src.listing_complete


@pytest.mark.parametrize("kind", KINDS)
def test_a_patient_listing_returns_that_patients_studies(capped, kind):
    truth = rest_studies(capped)
    for patient in ("PAT-A", "PAT-B"):
        expected = {uid for uid, s in truth.items() if s["patient"] == patient}
        assert len(expected) > CAP
        assert listed(source(kind, capped), {"PatientID": patient}) == expected
    assert listed(source(kind, capped), {"PatientID": "PAT-A", "StudyDate": "20240304"}) == {
        uid for uid, s in truth.items() if s["patient"] == "PAT-A" and s["date"] == "20240304"
    }


@pytest.mark.parametrize("kind", KINDS)
def test_uid_lists_and_modalities_are_matched_by_the_archive(capped, kind):
    uids = sorted(rest_studies(capped))
    some = uids[: CAP + 2]
    assert listed(source(kind, capped), {"StudyInstanceUID": some}) == set(some)
    assert listed(source(kind, capped), {"StudyInstanceUID": uids[5]}) == {uids[5]}
    study_uid = {s["ID"]: s["MainDicomTags"]["StudyInstanceUID"] for s in capped.get("/studies", expand="")}
    by_modality = defaultdict(set)
    for series in capped.get("/series", expand=""):
        by_modality[series["MainDicomTags"]["Modality"]].add(study_uid[series["ParentStudy"]])
    assert len(by_modality["CT"]) > CAP
    assert listed(source(kind, capped), {"ModalitiesInStudy": "MR"}) == by_modality["MR"]
    assert listed(source(kind, capped), {"ModalitiesInStudy": ["MR", "US"]}) == by_modality["MR"] | by_modality["US"]


@pytest.mark.parametrize("kind", KINDS)
def test_total_of_a_match_is_counted_once_and_iterated_from_that_listing(capped, kind):
    src = source(kind, capped)
    match = {"StudyDate": "20240301-20240302"}
    total = src.total(match)
    requests_after_listing = src.stats["requests"]
    assert total == 7 and src.stats["listing_queries"] > 1
    assert src.total(match) == total and src.stats["requests"] == requests_after_listing
    items = list(src.iter_studies(match))
    assert len(items) == total
    assert src.stats["studies_listed"] == total  # not listed again
    assert src.total() == len(PLAN)  # another match is another listing


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_match_is_refused_before_the_archive_is_asked(capped, kind):
    src = source(kind, capped)
    with pytest.raises(ValueError, match="PatientName"):
        list(src.iter_studies({"PatientName": "DOE^J"}))
    assert src.stats["requests"] == 0


class WarningAdapter(HTTPAdapter):
    """Real answers; the first `times` whose URL contains `needle` get the PS3.18 Warning
    a QIDO-RS server sends when it cut the answer at its maximum number of results."""

    WARNING = (
        '299 {+service}: "The number of results exceeded the maximum supported by the '
        'server. Additional results can be requested."'
    )

    def __init__(self, needle: str, times: int = 1):
        super().__init__()
        self.needle, self.times = needle, times

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if self.needle in request.url and self.times > 0:
            self.times -= 1
            response.headers["Warning"] = self.WARNING
        return response


def test_a_qido_answer_with_the_cut_warning_is_sliced_without_max_results(orthanc):
    session = requests.Session()
    session.mount("http://", WarningAdapter("/dicom-web/studies?"))
    src = DicomwebSource("pacs", orthanc.dicomweb_url, session=session)
    items = list(src.iter_studies())
    assert_whole_archive(src, items, orthanc_tree(orthanc))
    assert src.stats["listing_queries"] > 1 and src.listing_complete


def test_a_series_answer_with_the_cut_warning_fails_the_study(orthanc):
    uid = sorted(orthanc_tree(orthanc))[0]
    session = requests.Session()
    session.mount("http://", WarningAdapter(f"/studies/{uid}/series?"))
    items = list(DicomwebSource("pacs", orthanc.dicomweb_url, session=session).iter_studies({"StudyInstanceUID": uid}))
    assert len(items) == 1 and isinstance(items[0], StudyFailure)
    assert "cut its series answer short (Warning header)" in items[0].reason


# -- what slicing cannot reach, and studies cut at series or instance level ----------------
@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """Four studies over a limit of 3: one without StudyDate, one with 5 series, one with a
    series of 5 instances (each more than Orthanc answers one query), one plain."""
    folder = tmp_path_factory.mktemp("odd")
    with OrthancServer(extra_config=CAPPED) as server:
        undated, blobs_a = new_study(date=None, patient="PAT-U")
        wide, blobs_b = new_study(n_series=5, n_instances=1, date="20240310", patient="PAT-W")
        deep, blobs_c = new_study(n_series=1, n_instances=5, date="20240311", patient="PAT-D")
        plain, blobs_d = new_study(date="20240312", patient="PAT-P")
        store(server, folder, blobs_a + blobs_b + blobs_c + blobs_d)
        server.uids = {"undated": undated, "wide": wide, "deep": deep, "plain": plain}
        yield server


def test_qido_study_without_date_is_kept_from_the_capped_answer_and_the_gap_reported(odd):
    uids = odd.uids
    src = source("dicomweb", odd)
    items = {i.uid: i for i in src.iter_studies()}
    assert set(items) == set(uids.values())  # Orthanc answered all 4 (limit + 1) unsliced
    assert isinstance(items[uids["undated"]], StudyRecord)
    assert not src.listing_complete
    assert any("whose StudyDate no slice matches" in gap for gap in src.listing_gaps)


def test_c_find_study_without_date_is_listed_when_the_capped_answer_holds_it(odd, tmp_path):
    uids = odd.uids
    capped_answer, _log = findscu(odd, tmp_path / "all", calling_aet=CALLING_AET)
    src = source("dimse", odd)
    found = {i.uid for i in src.iter_studies()}
    assert found - {uids["undated"]} == {uids["wide"], uids["deep"], uids["plain"]}
    if uids["undated"] in {a.StudyInstanceUID for a in capped_answer}:
        assert uids["undated"] in found and not src.listing_complete
    else:  # no C-FIND can select it: the documented limitation
        assert uids["undated"] not in found


@pytest.mark.parametrize("kind", KINDS)
def test_a_study_whose_series_or_instances_were_cut_fails_instead_of_being_indexed_short(odd, kind):
    uids = odd.uids
    items = {i.uid: i for i in source(kind, odd).iter_studies({"StudyDate": "20240310-20240312"})}
    assert set(items) == {uids["wide"], uids["deep"], uids["plain"]}
    assert isinstance(items[uids["plain"]], StudyRecord)
    wide, deep = items[uids["wide"]], items[uids["deep"]]
    assert isinstance(wide, StudyFailure) and isinstance(deep, StudyFailure)
    if kind == "dimse":
        assert "series answer early (C-FIND status 0xFE00" in wide.reason
        assert "instance answer for series" in deep.reason and "0xFE00" in deep.reason
    else:
        assert "answered 4 series(s) but counts 5" in wide.reason
        assert "answered 4 instance(s) but counts 5" in deep.reason


# -- Orthanc's change feed ---------------------------------------------------------------
@pytest.fixture(scope="module")
def feed_orthanc(tmp_path_factory):
    with OrthancServer(extra_config={"StableAge": 1}) as server:
        server.folder = tmp_path_factory.mktemp("feed")
        yield server


def feed_of(server, **kwargs) -> OrthancChanges:
    return OrthancChanges("pacs", server.url, **kwargs)


def wait_for(feed: OrthancChanges, since: int, wanted, timeout: float = 20.0):
    """Read pages from `since` until `wanted(events)`; return (events, raw changes, last)."""
    events, changes = [], []
    deadline = time.monotonic() + timeout
    while True:
        page = feed.page(since, limit=1000)
        raw = requests.get(feed.url + "/changes", params={"since": since, "limit": 1000}, timeout=10).json()
        changes += [(c["ChangeType"], c["ResourceType"], c["ID"]) for c in raw["Changes"] if c["Seq"] <= page.last]
        events += page.events
        since = page.last
        if wanted(events):
            return events, changes, since
        assert time.monotonic() < deadline, f"no such events within {timeout}s: {events} {changes}"
        time.sleep(0.2)


def test_a_new_study_is_reported_at_once_and_again_once_stable(feed_orthanc):
    feed = feed_of(feed_orthanc)
    since = feed.last_seq()
    uid, blobs = new_study(n_series=2, n_instances=2, patient="PAT-NEW")
    store(feed_orthanc, feed_orthanc.folder, blobs)
    orthanc_id = study_id_of(feed_orthanc.get(f"/studies/{feed.lookup_study_ids(uid)[0]}"))

    first = feed.page(since, limit=1000)  # NewStudy: reported without waiting for StableAge
    assert first.events == [ChangeEvent("study", orthanc_id, uid)]
    deadline = time.monotonic() + 20
    while ("StableStudy", "Study", orthanc_id) not in _raw(feed, since):
        assert time.monotonic() < deadline, "the study never became stable"
        time.sleep(0.2)
    second = feed.page(first.last, limit=1000)
    if first.last < second.last:  # StableStudy came after the first read: the study is read again
        assert second.events == [ChangeEvent("study", orthanc_id, uid)]

    assert orthanc_id == orthanc_study_id("PAT-NEW", uid) == feed.lookup_study_ids(uid)[0]
    kinds = {(change, resource) for change, resource, _ in _raw(feed, since)}
    assert {
        ("NewInstance", "Instance"),
        ("NewSeries", "Series"),
        ("NewStudy", "Study"),
        ("StableSeries", "Series"),
        ("StableStudy", "Study"),
    } <= kinds
    assert since < second.last <= feed.last_seq()
    pages = list(feed.pages(since, limit=3))
    assert len(pages) > 2 and pages[-1].done and not any(p.done for p in pages[:-1])
    # NewStudy and StableStudy are pages apart: the study is read on each
    assert [e for p in pages for e in p.events] == [ChangeEvent("study", orthanc_id, uid)] * 2


def _raw(feed: OrthancChanges, since: int) -> list[tuple]:
    answer = requests.get(feed.url + "/changes", params={"since": since, "limit": 1000}, timeout=10).json()
    return [(c["ChangeType"], c["ResourceType"], c["ID"]) for c in answer["Changes"]]


def test_a_series_added_to_a_stable_study_reports_the_study_again(feed_orthanc):
    feed = feed_of(feed_orthanc)
    uid, blobs = new_study(patient="PAT-GROW")
    since = feed.last_seq()
    store(feed_orthanc, feed_orthanc.folder, blobs)
    _events, _changes, since = wait_for(feed, since, lambda ev: uid in {e.study_uid for e in ev})

    series = generate_uid()
    store(feed_orthanc, feed_orthanc.folder, [instance(uid, series, patient="PAT-GROW") for _ in range(3)])
    events, changes, _last = wait_for(feed, since, lambda ev: any(e.kind == "study" for e in ev))

    assert events == [ChangeEvent("study", orthanc_study_id("PAT-GROW", uid), uid)]
    kinds = [(change, resource) for change, resource, _ in changes]
    assert ("NewSeries", "Series") in kinds and ("StableStudy", "Study") in kinds
    assert ("NewStudy", "Study") not in kinds


def test_a_deleted_study_leaves_no_change_and_is_found_by_comparing_study_ids(feed_orthanc):
    feed = feed_of(feed_orthanc)
    keep_uid, keep = new_study(patient="PAT-KEEP")
    gone_uid, gone = new_study(patient="PAT-GONE")
    since = feed.last_seq()
    store(feed_orthanc, feed_orthanc.folder, keep + gone)
    _events, _changes, since = wait_for(feed, since, lambda ev: {keep_uid, gone_uid} <= {e.study_uid for e in ev})
    keep_id, gone_id = orthanc_study_id("PAT-KEEP", keep_uid), orthanc_study_id("PAT-GONE", gone_uid)
    assert requests.delete(f"{feed_orthanc.url}/studies/{gone_id}", timeout=10).status_code == 200
    time.sleep(1.5)  # a Deleted change, if Orthanc logged one, would be there by now

    page = feed.page(since, limit=1000)
    assert (page.events, page.changes) == ([], 0)  # Orthanc 1.10 logs no Deleted change...
    everything = feed_orthanc.get("/changes", since=0, limit=10000)["Changes"]
    assert gone_id not in {c["ID"] for c in everything}  # ...and drops the study's earlier changes
    assert keep_id in {c["ID"] for c in everything}

    assert feed.deleted_studies({keep_id, gone_id}) == [ChangeEvent("deleted", gone_id, None)]
    assert feed.deleted_studies({keep_id: keep_uid, gone_id: gone_uid}) == [ChangeEvent("deleted", gone_id, None)]
    assert feed.deleted_studies([]) == []
    assert keep_id in feed.study_ids(page_size=2) and gone_id not in feed.study_ids()


def test_a_feed_behind_the_cursor_says_reset(feed_orthanc):
    feed = feed_of(feed_orthanc)
    last = feed.last_seq()
    page = feed.page(last + 1000)
    assert page.reset and page.events == [] and last <= page.last < last + 1000
    assert not feed.page(page.last).reset


def test_orthanc_ids_computed_from_qido_answers_and_looked_up_are_orthancs(orthanc):
    """Over pydicom's test files: odd Patient IDs, one UID under two Patient IDs."""
    rest = {s["ID"]: s for s in orthanc.get("/studies", expand="")}
    answers = requests.get(orthanc.dicomweb_url + "/studies", timeout=30).json()
    computed = {
        orthanc_study_id(a.get("00100020", {}).get("Value", [""])[0], a["0020000D"]["Value"][0]) for a in answers
    }
    assert computed <= set(rest)
    for missed in set(rest) - computed:  # QIDO strips the spaces Orthanc hashed
        patient = rest[missed]["PatientMainDicomTags"]["PatientID"]
        assert patient != patient.strip()
        assert orthanc_study_id(patient, rest[missed]["MainDicomTags"]["StudyInstanceUID"]) == missed
    feed = feed_of(orthanc)
    looked_up = set()
    for uid in {a["0020000D"]["Value"][0] for a in answers}:
        looked_up |= set(feed.lookup_study_ids(uid))
    assert looked_up == set(rest)
    # an ID computed from a stripped PatientID is not taken for a deleted study
    known = {
        orthanc_study_id(a.get("00100020", {}).get("Value", [""])[0], a["0020000D"]["Value"][0]): a["0020000D"][
            "Value"
        ][0]
        for a in answers
    }
    assert feed.deleted_studies(known) == []


class ScriptedAdapter(HTTPAdapter):
    """Real HTTP, except scripted answers for URLs containing a given text."""

    def __init__(self, script: dict[str, list]):
        super().__init__()
        self.script = script
        self.calls = defaultdict(int)

    def send(self, request, **kwargs):
        for needle, answers in self.script.items():
            if needle in request.url and answers:
                self.calls[needle] += 1
                status, body = answers.pop(0)
                response = requests.Response()
                response.status_code, response._content = status, body
                response.url, response.request = request.url, request
                return response
        return super().send(request, **kwargs)


def test_a_page_reports_each_study_once_in_the_order_of_its_last_change(feed_orthanc):
    feed = feed_of(feed_orthanc)
    uid, blobs = new_study(patient="PAT-PAGE")
    since = feed.last_seq()
    store(feed_orthanc, feed_orthanc.folder, blobs)
    wait_for(feed, since, lambda ev: uid in {e.study_uid for e in ev})
    real = orthanc_study_id("PAT-PAGE", uid)
    changes = [
        {"ChangeType": "StableStudy", "ResourceType": "Study", "ID": real, "Seq": 11},
        {"ChangeType": "StableStudy", "ResourceType": "Study", "ID": "gone-before-read", "Seq": 12},
        {"ChangeType": "Deleted", "ResourceType": "Study", "ID": "deleted-1", "Seq": 13},
        {"ChangeType": "StableSeries", "ResourceType": "Series", "ID": "some-series", "Seq": 14},
        {"ChangeType": "StableStudy", "ResourceType": "Study", "ID": "deleted-2", "Seq": 15},
        {"ChangeType": "Deleted", "ResourceType": "Study", "ID": "deleted-2", "Seq": 16},
        {"ChangeType": "StableStudy", "ResourceType": "Study", "ID": real, "Seq": 17},
    ]
    body = json.dumps({"Changes": changes, "Done": False, "Last": 17}).encode()
    session = requests.Session()
    session.mount("http://", ScriptedAdapter({"/changes": [(200, body)]}))
    page = feed_of(feed_orthanc, session=session).page(10)
    assert page.events == [
        ChangeEvent("deleted", "deleted-1", None),
        ChangeEvent("deleted", "deleted-2", None),
        ChangeEvent("study", real, uid),
    ]
    assert (page.last, page.done, page.changes, page.gone) == (17, False, 7, 1)


def test_busy_answers_are_retried_and_a_feed_that_stays_busy_raises_source_error(feed_orthanc):
    session = requests.Session()
    adapter = ScriptedAdapter({"/changes": [(503, b""), (502, b"")]})
    session.mount("http://", adapter)
    feed = feed_of(feed_orthanc, session=session, backoff=0.01)
    assert feed.last_seq() >= 0  # the third try got through
    assert feed.stats["retries"] == 2
    adapter.script["/changes"] = [(503, b"")] * 4
    with pytest.raises(SourceError, match=r"'pacs'.*cannot read the change feed: HTTP 503"):
        feed.page(0)
    assert feed.stats["retries"] == 2 + 3


def test_an_unreachable_archive_raises_source_error_naming_it():
    url = f"http://127.0.0.1:{free_port()}"
    feed = OrthancChanges("pacs-down", url, username="bob", password="pa55word", retries=1, backoff=0.01)
    with pytest.raises(SourceError) as caught:
        feed.last_seq()
    message = str(caught.value)
    assert "'pacs-down'" in message and url in message and "cannot connect" in message
    assert "pa55word" not in message
    assert feed.stats["requests"] == 2


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    with OrthancServer(users={"alice": "s3cret-pw"}, extra_config={"StableAge": 1}) as server:
        yield server


def test_basic_auth_reads_a_secured_feed_and_wrong_credentials_raise_source_error(secured):
    assert feed_of(secured, username="alice", password="s3cret-pw").last_seq() >= 0
    for credentials in ({"username": "alice", "password": "wrong-pw"}, {}, {"token": "not-a-token"}):
        feed = feed_of(secured, **credentials)
        with pytest.raises(SourceError, match=r"authentication refused \(HTTP 401\)") as caught:
            feed.page(0)
        assert "wrong-pw" not in str(caught.value) and "not-a-token" not in str(caught.value)
        assert feed.stats["requests"] == 1  # 401 is not retried


def test_a_rest_url_that_is_not_orthanc_says_so(feed_orthanc):
    feed = OrthancChanges("pacs", feed_orthanc.dicomweb_url)
    with pytest.raises(SourceError, match="HTTP 404: no Orthanc REST API there"):
        feed.last_seq()
