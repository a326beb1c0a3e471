"""FolderSource over real files: pydicom's test data, a DICOMDIR set, junk, broken files.

Expectations are computed independently with plain `pydicom.dcmread` (whole header) and
`dataset_to_dicom_json`, never with the source's own code.
"""

from __future__ import annotations

import copy
import io
import os
import shutil
import warnings
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.fileset import FileSet
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from app.mapping import tags
from app.sources import folder as folder_module
from app.sources.base import StudyFailure, StudyRecord
from app.sources.dicom_json import dataset_to_dicom_json
from app.sources.errors import SourceError
from app.sources.folder import FolderSource

TEST_FILES = Path(get_testdata_file("CT_small.dcm")).parent
TINY_ALPHA = TEST_FILES / "dicomdirtests" / "TINY_ALPHA"
DICOMDIR_UID = "1.2.840.10008.1.3.10"

STUDY_TAGS = sorted(Tag(t) for t in {**tags.PATIENT, **tags.STUDY})
SERIES_TAGS = sorted(Tag(t) for t in tags.SERIES)
INSTANCE_TAGS = sorted(Tag(t) for t in tags.INSTANCE)


# -- independent reference -----------------------------------------------------------
def walk_order(root: Path) -> list[Path]:
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    return sorted(files, key=lambda p: p.relative_to(root).parts)


def classify(path: Path):
    """('instance'|'dicomdir'|'nouid'|'skip', dataset or None), by plain pydicom."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            part10 = True
        except Exception:  # noqa: BLE001
            part10 = False
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            except Exception:  # noqa: BLE001
                return "skip", None
        if ds.file_meta.get("MediaStorageSOPClassUID") == DICOMDIR_UID:
            return "dicomdir", ds
        has = {k: bool(ds.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
        if not part10 and not (has["StudyInstanceUID"] and has["SOPInstanceUID"]):
            return "skip", None
        if all(has.values()):
            return "instance", ds
        return "nouid", ds


def reference(root: Path):
    """What the folder holds: studies -> series -> instances, first-file attributes."""
    studies: dict = {}
    counts = defaultdict(int)
    failures = set()
    for path in walk_order(root):
        kind, ds = classify(path)
        counts[kind] += 1
        location = path.relative_to(root).as_posix()
        if kind == "nouid" and not ds.get("StudyInstanceUID"):
            failures.add(location)
        if kind != "instance":
            continue
        study = studies.setdefault(
            str(ds.StudyInstanceUID), {"attrs": dataset_to_dicom_json(ds, STUDY_TAGS)[0], "series": {}}
        )
        series = study["series"].setdefault(
            str(ds.SeriesInstanceUID), {"attrs": dataset_to_dicom_json(ds, SERIES_TAGS)[0], "instances": {}}
        )
        series["instances"].setdefault(str(ds.SOPInstanceUID), dataset_to_dicom_json(ds, INSTANCE_TAGS)[0])
    return studies, counts, failures


def run(source: FolderSource):
    items = list(source.iter_studies())
    records = [i for i in items if isinstance(i, StudyRecord)]
    failures = [i for i in items if isinstance(i, StudyFailure)]
    return items, records, failures


def as_tree(records):
    return {
        r.uid: {s.attrs["0020000E"]["Value"][0]: [i["00080018"]["Value"][0] for i in s.instances] for s in r.series}
        for r in records
    }


@pytest.fixture
def testdata_copy(tmp_path) -> Path:
    root = tmp_path / "archive"
    shutil.copytree(TEST_FILES, root)
    return root


# -- pydicom's test data -------------------------------------------------------------
@pytest.mark.slow
def test_every_instance_of_pydicom_testdata_is_grouped_like_pydicom_reads_it(testdata_copy):
    expected, counts, expected_failures = reference(testdata_copy)
    source = FolderSource("files", testdata_copy)
    items, records, failures = run(source)

    # one record per StudyInstanceUID, in walk order, each with all its series/instances
    assert [r.uid for r in records] == list(expected)
    assert as_tree(records) == {
        uid: {suid: list(s["instances"]) for suid, s in study["series"].items()} for uid, study in expected.items()
    }
    for record in records:
        study = expected[record.uid]
        assert record.attrs == study["attrs"], record.uid  # first file of the study
        for series in record.series:
            ref = study["series"][series.attrs["0020000E"]["Value"][0]]
            assert series.attrs == ref["attrs"]
            # the per-file fast path gives exactly what dataset_to_dicom_json gives
            assert series.instances == list(ref["instances"].values())

    assert {f.location for f in failures} == expected_failures
    assert all(f.uid is None and "StudyInstanceUID" in f.reason for f in failures)
    assert len(items) == source.total() == len(expected) + len(expected_failures)

    stats = source.stats
    assert stats["files"] == sum(counts.values())
    assert stats["skipped"] == counts["skip"]
    assert stats["dicomdir"] == counts["dicomdir"] == 8
    assert stats["dicomdir_missing"] == 0
    assert stats["failed"] == counts["nouid"]
    assert stats["instances"] == sum(len(s["instances"]) for st in expected.values() for s in st["series"].values())
    assert stats["dicom"] == stats["instances"] + stats["duplicates"]


def test_files_without_preamble_are_instances_when_they_carry_uids(testdata_copy):
    _, records, _ = run(FolderSource("files", testdata_copy))
    sops = {i["00080018"]["Value"][0] for r in records for s in r.series for i in s.instances}
    for name in ("ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm", "rtstruct.dcm"):
        ds = pydicom.dcmread(TEST_FILES / name, force=True, stop_before_pixels=True)
        assert ds.preamble is None
        assert ds.SOPInstanceUID in sops, name


@pytest.mark.slow
def test_text_and_random_binary_files_are_skipped_and_counted(testdata_copy):
    before = FolderSource("files", testdata_copy)
    _, records_before, failures_before = run(before)

    (testdata_copy / "notes.txt").write_text("Patient list\nnot a DICOM file\n" * 50)
    (testdata_copy / "dicomdirtests" / "blob.bin").write_bytes(os.urandom(64 * 1024))
    (testdata_copy / "IM_EMPTY").write_bytes(b"")
    after = FolderSource("files", testdata_copy)
    _, records_after, failures_after = run(after)

    assert after.stats["files"] == before.stats["files"] + 3
    assert after.stats["skipped"] == before.stats["skipped"] + 3
    assert records_after == records_before
    assert failures_after == failures_before


@pytest.mark.slow
def test_scan_is_deterministic_and_repeatable(testdata_copy):
    first = FolderSource("files", testdata_copy)
    items_a = list(first.iter_studies())
    items_b = list(FolderSource("files", testdata_copy).iter_studies())
    items_c = list(first.iter_studies())  # a second sync rescans
    assert items_a == items_b == items_c
    assert first.total() == len(items_a)


def test_total_scans_once_and_iteration_reuses_that_scan(testdata_copy, monkeypatch):
    source = FolderSource("files", testdata_copy)
    scans = []
    real_scan = source._scan
    monkeypatch.setattr(source, "_scan", lambda: (scans.append(1), real_scan())[1])
    total = source.total()
    items = list(source.iter_studies())
    assert len(items) == total
    assert len(scans) == 1


# -- DICOMDIR media ------------------------------------------------------------------
def test_dicomdir_set_instances_are_found_and_the_dicomdir_is_not_one(tmp_path):
    media = tmp_path / "cdrom"
    shutil.copytree(TINY_ALPHA, media)
    referenced = {i.ReferencedSOPInstanceUIDInFile for i in FileSet(media / "DICOMDIR").find()}
    assert len(referenced) == 50
    assert all("." not in Path(i.path).name for i in FileSet(media / "DICOMDIR").find())

    source = FolderSource("cd", media)
    items, records, failures = run(source)

    assert failures == []
    assert len(records) == 1
    sops = {i["00080018"]["Value"][0] for s in records[0].series for i in s.instances}
    assert sops == referenced
    assert source.stats["dicomdir"] == 1
    assert source.stats["dicomdir_refs"] == 50
    assert source.stats["dicomdir_missing"] == 0
    assert source.stats["dicom"] == 50
    assert source.stats["skipped"] == 1  # the README


def test_dicomdir_reference_to_a_missing_file_is_reported(tmp_path):
    media = tmp_path / "cdrom"
    shutil.copytree(TINY_ALPHA, media)
    (media / "PT000000" / "ST000000" / "SE000000" / "IM00000A").unlink()

    source = FolderSource("cd", media)
    _, records, failures = run(source)

    assert sum(len(s.instances) for s in records[0].series) == 49
    assert source.stats["dicomdir_missing"] == 1
    assert [f.location for f in failures] == ["PT000000/ST000000/SE000000/IM00000A"]
    assert "DICOMDIR" in failures[0].reason


# -- grouping across folders -----------------------------------------------------------
def save(ds, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=False)
    return path


def test_a_study_split_over_folders_gives_one_record_with_all_its_series(tmp_path):
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    save(ct, tmp_path / "a" / "1.dcm")
    save(mr, tmp_path / "b" / "1.dcm")
    second = copy.deepcopy(ct)
    second.SeriesInstanceUID = generate_uid()
    second.SOPInstanceUID = generate_uid()
    second.SeriesDescription = "second series"
    second.PatientName = "Changed^Later"  # study attributes come from the first file
    save(second, tmp_path / "c" / "x" / "2.dcm")
    third = copy.deepcopy(second)
    third.SOPInstanceUID = generate_uid()
    save(third, tmp_path / "c" / "y" / "3")  # no extension

    _, records, failures = run(FolderSource("split", tmp_path))

    assert failures == []
    assert [r.uid for r in records] == [ct.StudyInstanceUID, mr.StudyInstanceUID]
    study = records[0]
    assert as_tree([study])[ct.StudyInstanceUID] == {
        ct.SeriesInstanceUID: [ct.SOPInstanceUID],
        second.SeriesInstanceUID: [second.SOPInstanceUID, third.SOPInstanceUID],
    }
    assert study.attrs["00100010"]["Value"][0]["Alphabetic"] == str(ct.PatientName)
    assert study.series[1].attrs["0008103E"]["Value"] == ["second series"]
    assert "00080061" not in study.attrs  # query-only attributes are not invented


def test_the_same_instance_saved_twice_is_kept_once(tmp_path):
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    save(ct, tmp_path / "a.dcm")
    save(ct, tmp_path / "copy" / "a.dcm")
    source = FolderSource("dup", tmp_path)
    _, records, _ = run(source)
    assert sum(len(s.instances) for s in records[0].series) == 1
    assert source.stats["duplicates"] == 1
    assert any("SOPInstanceUID" in r for r in records[0].repairs)


# -- broken files ----------------------------------------------------------------------
def test_dicom_file_without_study_uid_is_a_failure_with_its_location(tmp_path):
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    save(ct, tmp_path / "good" / "ct.dcm")
    broken = copy.deepcopy(ct)
    del broken.StudyInstanceUID
    broken.SOPInstanceUID = generate_uid()
    save(broken, tmp_path / "bad" / "nostudy.dcm")
    save(pydicom.dcmread(get_testdata_file("MR_small.dcm")), tmp_path / "zz" / "mr.dcm")

    source = FolderSource("broken", tmp_path)
    _, records, failures = run(source)

    assert [r.uid for r in records] == [
        ct.StudyInstanceUID,
        pydicom.dcmread(get_testdata_file("MR_small.dcm")).StudyInstanceUID,
    ]  # the walk went on
    assert len(failures) == 1
    assert failures[0].uid is None
    assert failures[0].location == "bad/nostudy.dcm"
    assert "StudyInstanceUID" in failures[0].reason
    assert source.stats["failed"] == 1


def test_missing_series_uid_fails_the_study_or_is_a_repair_of_it(tmp_path):
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    lone = copy.deepcopy(ct)
    lone.StudyInstanceUID = generate_uid()
    del lone.SeriesInstanceUID
    save(lone, tmp_path / "lone.dcm")
    save(ct, tmp_path / "ok.dcm")
    partial = copy.deepcopy(ct)
    partial.SOPInstanceUID = generate_uid()
    del partial.SeriesInstanceUID
    save(partial, tmp_path / "partial.dcm")

    _, records, failures = run(FolderSource("broken", tmp_path))

    assert failures == [
        StudyFailure(uid=lone.StudyInstanceUID, reason="DICOM file without SeriesInstanceUID", location="lone.dcm")
    ]
    assert [r.uid for r in records] == [ct.StudyInstanceUID]
    assert any("partial.dcm" in r and "SeriesInstanceUID" in r for r in records[0].repairs)


def test_unparsable_dicom_file_is_a_failure_and_the_walk_goes_on(tmp_path):
    save(pydicom.dcmread(get_testdata_file("CT_small.dcm")), tmp_path / "a.dcm")
    # a Part 10 header whose file meta announces a 4 GB element
    (tmp_path / "b.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"1.2")
    deflated = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    raw = io.BytesIO()
    deflated.save_as(raw, enforce_file_format=True)
    data = bytearray(raw.getvalue())
    (tmp_path / "c.dcm").write_bytes(bytes(data[:140]))  # cut inside the file meta

    source = FolderSource("broken", tmp_path)
    _, records, failures = run(source)

    assert len(records) == 1
    assert sorted(f.location for f in failures) == ["b.dcm", "c.dcm"]
    assert all(f.uid is None for f in failures)
    assert source.stats["skipped"] == 0


def test_repairs_from_unconvertible_values_are_reported_once(tmp_path):
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for n in range(3):
        ds = copy.deepcopy(ct)
        ds.SOPInstanceUID = generate_uid()
        ds.add_new(0x00200013, "IS", None)
        ds[0x00200013]._value = "not-a-number"  # InstanceNumber pydicom cannot convert
        save(ds, tmp_path / f"{n}.dcm")
    _, records, failures = run(FolderSource("repairs", tmp_path))
    assert failures == []
    instances = [i for s in records[0].series for i in s.instances]
    assert len(instances) == 3
    assert all("00200013" not in i for i in instances)
    assert [r for r in records[0].repairs if "InstanceNumber" in r] == [
        next(r for r in records[0].repairs if "InstanceNumber" in r)
    ]


# -- cost ------------------------------------------------------------------------------
def test_headers_only_pixel_data_is_never_read(tmp_path, monkeypatch):
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.PixelData = b"\0" * (16 * 1024 * 1024)
    ct["PixelData"].VR = "OB"
    save(ct, tmp_path / "big.dcm")

    read_bytes = []
    real_open = open

    class Counting(io.BufferedReader):
        def read(self, size=-1):
            data = super().read(size)
            read_bytes.append(len(data))
            return data

    def counting_open(path, mode="r", *args, **kwargs):
        if "b" in mode:
            return Counting(real_open(path, "rb", buffering=0))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(folder_module, "open", counting_open, raising=False)
    _, records, _ = run(FolderSource("big", tmp_path))
    assert len(records) == 1
    assert sum(read_bytes) < 64 * 1024


def test_missing_folder_raises_source_error_naming_the_source(tmp_path):
    with pytest.raises(SourceError, match="'usb-stick'"):
        list(FolderSource("usb-stick", tmp_path / "nope").iter_studies())
