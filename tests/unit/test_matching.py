"""Listing match keys and the sliced listing, against an in-memory archive with a result limit.

`CappedArchive` matches like Orthanc 1.10 does (checked in tests/integration): dates and
times compared as strings, an empty value inside every open-lower range, an absent value in
no range; it answers at most `cap` studies and says when it cut the answer.
"""

from __future__ import annotations

import pytest

from app.sources.matching import (
    DayRange,
    cfind_keys,
    match_key,
    normalize_match,
    qido_params,
    sliced_listing,
    uid_chunks,
)


class CappedArchive:
    def __init__(self, studies, cap):
        self.studies = studies  # list of dicts: uid, date, time (None = absent), patient
        self.cap = cap
        self.queries: list[dict] = []

    @staticmethod
    def _in_range(value, query) -> bool:
        if value is None:
            return False
        if "-" not in query:
            return value == query
        lo, hi = query.split("-")
        return (not lo or (value != "" and value >= lo)) and (not hi or value <= hi)

    def query(self, match):
        self.queries.append(dict(match))
        found = []
        for study in self.studies:
            if "StudyDate" in match and not self._in_range(study["date"], match["StudyDate"]):
                continue
            if "StudyTime" in match and not self._in_range(study["time"], match["StudyTime"]):
                continue
            if "PatientID" in match and study["patient"] != match["PatientID"]:
                continue
            uids = match.get("StudyInstanceUID")
            if uids is not None and study["uid"] not in (uids if isinstance(uids, tuple) else (uids,)):
                continue
            found.append(study)
        return found[: self.cap], len(found) > self.cap


def study(n, date, time="120000", patient="P1"):
    return {"uid": f"1.2.{n}", "date": date, "time": time, "patient": patient}


def uids(listing):
    return sorted(a["uid"] for a in listing.answers)


def run(archive, match=None, dates=True):
    date_of = (lambda a: a["date"]) if dates else (lambda a: None)
    return sliced_listing(archive.query, normalize_match(match), lambda a: a["uid"], date_of)


# -- match keys --------------------------------------------------------------------------
def test_a_match_is_normalized_and_sent_as_query_parameters_or_c_find_keys():
    match = normalize_match(
        {
            "StudyDate": "20240101-20240131",
            "PatientID": " P1 ",
            "StudyInstanceUID": ["1.2.3", "1.2.4", "1.2.3"],
            "ModalitiesInStudy": "CT",
        }
    )
    assert match == {
        "StudyDate": "20240101-20240131",
        "PatientID": "P1",
        "StudyInstanceUID": ("1.2.3", "1.2.4"),
        "ModalitiesInStudy": "CT",
    }
    assert qido_params(match)["StudyInstanceUID"] == "1.2.3,1.2.4"
    assert cfind_keys(match)["StudyInstanceUID"] == ["1.2.3", "1.2.4"]
    assert match_key({"PatientID": "P1"}) == match_key({"PatientID": "P1 "}) != match_key(None)
    assert cfind_keys(normalize_match({"PatientID": "DOE,J"})) == {"PatientID": "DOE,J"}
    with pytest.raises(ValueError, match="QIDO-RS reads as a list"):
        qido_params(normalize_match({"PatientID": "DOE,J"}))


@pytest.mark.parametrize(
    "match, message",
    [
        ({"PatientName": "X"}, "cannot match on 'PatientName'"),
        ({"StudyDate": "2024-01-01"}, "not a date"),
        ({"StudyDate": "20240230"}, "not a calendar date"),
        ({"StudyDate": "20240201-20240101"}, "ends before it starts"),
        ({"StudyInstanceUID": "1.2.x"}, "not a DICOM UID"),
        ({"StudyInstanceUID": []}, "matches nothing"),
        ({"PatientID": ["A", "B"]}, "one value"),
        ({"PatientID": "A\\B"}, "backslash"),
        ({"ModalitiesInStudy": "ct"}, "modality code"),
        ({"PatientID": 7}, "expected a string"),
    ],
)
def test_bad_matches_are_refused_naming_the_key(match, message):
    with pytest.raises(ValueError, match=message):
        normalize_match(match)


def test_empty_values_and_open_ranges_match_everything():
    assert normalize_match({"PatientID": "", "StudyDate": "-"}) == {}
    assert normalize_match({"StudyDate": "20240101-20240101"}) == {"StudyDate": "20240101"}
    assert normalize_match({"StudyDate": "-20240101"}) == {"StudyDate": "-20240101"}


def test_date_ranges_halve_and_keep_their_open_ends():
    assert [h.text() for h in DayRange.parse("20240101-20240104").halves()] == [
        "20240101-20240102",
        "20240103-20240104",
    ]
    low, high = DayRange.parse("-20240104").halves()
    assert low.text().startswith("-") and high.text().endswith("-20240104")
    assert DayRange.parse("20240101").halves() is None


def test_long_uid_lists_are_sent_in_chunks():
    match = normalize_match({"StudyInstanceUID": [f"1.2.{n}" for n in range(7)], "PatientID": "P"})
    chunks = uid_chunks(match, 3)
    assert [len(c["StudyInstanceUID"]) if isinstance(c["StudyInstanceUID"], tuple) else 1 for c in chunks] == [3, 3, 1]
    assert all(c["PatientID"] == "P" for c in chunks)


# -- sliced listing ----------------------------------------------------------------------
def test_an_answer_under_the_limit_is_the_listing_in_one_query():
    archive = CappedArchive([study(1, "20240101"), study(2, ""), study(3, None)], cap=5)
    listing = run(archive)
    assert uids(listing) == ["1.2.1", "1.2.2", "1.2.3"]  # undated studies too
    assert (listing.queries, listing.sliced, listing.complete) == (1, False, True)


@pytest.mark.parametrize("dates", [True, False], ids=["around-the-median", "halves"])
def test_a_capped_archive_is_listed_completely_by_date_slices(dates):
    studies = [study(n, f"202401{1 + n % 9:02d}", f"{8 + n % 5:02d}0000") for n in range(40)]
    archive = CappedArchive(studies, cap=6)
    listing = run(archive, dates=dates)
    assert uids(listing) == sorted(s["uid"] for s in studies)
    assert listing.complete and listing.sliced
    assert len(listing.answers) == 40  # no study twice
    assert listing.queries == len(archive.queries) > 1


def test_cutting_around_the_median_date_isolates_a_crowded_day_in_few_queries():
    studies = [study(n, "20240105", f"{n:02d}0000") for n in range(10)] + [study(99, "19990101")]
    by_median, by_halves = CappedArchive(studies, cap=4), CappedArchive(studies, cap=4)
    assert uids(run(by_median)) == uids(run(by_halves, dates=False)) == sorted(s["uid"] for s in studies)
    assert len(by_median.queries) < len(by_halves.queries) / 2
    assert {"StudyDate": "20240105"} in by_median.queries[:4]


def test_a_day_above_the_limit_is_cut_by_study_time_with_shared_boundaries():
    # 11:59:59.5 compares above "115959" as a string: overlapping halves still catch it
    times = ["080000", "115959.5", "120000", "1200", "130000", "235959.9", "000000"]
    studies = [study(n, "20240105", t) for n, t in enumerate(times)] + [study(99, "20240106")]
    listing = run(CappedArchive(studies, cap=3))
    assert uids(listing) == sorted(s["uid"] for s in studies)
    assert listing.complete
    assert len(listing.answers) == len(studies)
    assert listing.overlaps >= 1  # the study at 12:00:00 came back from both halves


def test_a_window_and_a_patient_are_listed_by_the_archive_and_sliced_when_capped():
    studies = [study(n, f"2024010{1 + n % 6}", f"{10 + n}0000", patient=f"P{n % 2}") for n in range(12)]
    archive = CappedArchive(studies, cap=3)
    window = run(archive, {"StudyDate": "20240102-20240104"})
    assert uids(window) == sorted(s["uid"] for s in studies if "20240102" <= s["date"] <= "20240104")
    patient = run(archive, {"PatientID": "P1"})
    assert uids(patient) == sorted(s["uid"] for s in studies if s["patient"] == "P1")
    assert window.complete and patient.complete


def test_empty_dates_come_with_the_open_lower_slice():
    studies = [study(n, f"2024010{1 + n % 4}", f"{10 + n}0000") for n in range(8)] + [study(50, ""), study(51, "")]
    listing = run(CappedArchive(studies, cap=3))
    assert uids(listing) == sorted(s["uid"] for s in studies)
    assert listing.complete


def test_absent_dates_in_the_capped_answer_are_kept_and_reported_as_a_gap():
    studies = [study(0, None)] + [study(n, f"2024010{1 + n % 4}", f"{10 + n}0000") for n in range(1, 9)]
    listing = run(CappedArchive(studies, cap=3))
    assert uids(listing) == sorted(s["uid"] for s in studies)
    assert listing.unsliced == 1
    assert not listing.complete
    assert "whose StudyDate no slice matches" in listing.gaps[0]


def test_absent_dates_beyond_the_limit_cannot_be_seen():
    """The limitation: neither C-FIND nor QIDO-RS can select studies without a date."""
    studies = [study(n, f"2024010{1 + n % 4}", f"{10 + n}0000") for n in range(1, 9)] + [study(0, None)]
    listing = run(CappedArchive(studies, cap=3))
    assert "1.2.0" not in uids(listing)
    assert len(uids(listing)) == 8


def test_more_studies_in_one_second_than_the_limit_is_a_gap():
    studies = [study(n, "20240101", "101010") for n in range(5)]
    listing = run(CappedArchive(studies, cap=3))
    assert not listing.complete
    assert "cannot be cut further" in listing.gaps[0]
    assert "StudyDate 20240101, StudyTime" in listing.gaps[0]
    assert len(uids(listing)) >= 3
