"""Damaged DICOM headers: every file is indexed with a recorded repair or quarantined with its
reason, the rest of the sync goes on, and nothing raises.

The corpus (damaged_corpus.py) is built at run time from the real files shipped inside
pydicom's wheel. The folder half runs the real sync (`sync_source`, what `imaging-facade
sync` runs) on SQLite and PostgreSQL and reads the outcome back through the FHIR API and the
quarantine; the DICOMweb half gives the mapping the same kinds of bad values as an archive's
DICOM JSON (PS3.18 F.2).
"""

from __future__ import annotations

import copy
import logging
import os
import random
import re
import shutil
from pathlib import Path

import orjson
import pytest

from app.mapping import MappingError, map_study
from app.mapping.context import MappingContext
from app.sources.base import SeriesRecord, StudyRecord
from app.sources.dicom_json import dataset_to_dicom_json
from app.store.repository import Store
from app.sync import sync_source
from app.web import create_app
from tests.support.bundles import next_link
from tests.support.damaged_corpus import CASES, INTACT, _file, dataset_start, part10, real
from tests.support.keys import TEST_IDENTITY

SOURCE = "damaged"
#: values written into the corpus that are patient data: the logs must never show them
PATIENT_DATA = ("Oversized", "Müller", "M\ufffdller", "OTHER-0", "Schädel")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """The damaged files and the intact real files they sit beside, in one folder."""
    root = tmp_path_factory.mktemp("damaged") / "archive"
    root.mkdir()
    for case in CASES:
        with open(os.path.join(bytes(root), case.path_name), "wb") as out:
            out.write(case.build(case))
    for name in INTACT:
        shutil.copyfile(_file(name), root / f"intact_{name}")
    return root


def _config(write_config, store_url: str, archive: Path):
    return write_config(
        {
            "store": store_url,
            "timezone": "Europe/Berlin",
            "server": {"base_url": "http://testserver/fhir"},
            "security": {"open": True},
            "sources": [{"name": SOURCE, "type": "folder", "path": str(archive)}],
        }
    )


def _every(client, rtype: str) -> list[dict]:
    found, url = [], f"/fhir/{rtype}?_count=50"
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        found += [entry["resource"] for entry in body.get("entry", [])]
        url = next_link(body)
    return found


def _names_the_problem(reason: str) -> bool:
    """More than an exception's type: words a user can act on."""
    return not re.fullmatch(r"[\w.]*(Error|Exception)(: .*)?", reason) and len(reason.split()) >= 3


def _check_logs(caplog) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]
    assert "Traceback" not in caplog.text
    for value in PATIENT_DATA:
        assert value not in caplog.text


@pytest.mark.slow
def test_every_damaged_file_is_repaired_with_a_note_or_quarantined_with_its_reason(
    archive, store_url, write_config, valid_r4, caplog
):
    caplog.set_level(logging.INFO)
    config = _config(write_config, store_url, archive)
    store = Store.from_config(config)
    summary = sync_source(store, config.sources[0])
    assert summary.error is None
    client = create_app(config, store).test_client()
    quarantine = {entry.key: entry for entry in store.quarantine.entries(SOURCE)}

    expected_keys = set()
    for case in CASES:
        location = case.path_name.decode("utf-8", "replace")
        study = client.get(f"/fhir/ImagingStudy/{case.study_uid}")
        if case.expect == "repaired":
            assert study.status_code == 200, case.name
            notes = [note["text"] for note in study.get_json().get("note", [])]
            assert any(all(word in note for word in case.words) for note in notes), (case.name, notes)
            assert location not in quarantine and case.study_uid not in quarantine, case.name
        elif case.expect == "quarantined":
            key = location if location in quarantine else case.study_uid
            assert key in quarantine, (case.name, sorted(quarantine))
            reason = quarantine[key].reason
            assert all(word in reason for word in case.words), (case.name, reason)
            assert _names_the_problem(reason), (case.name, reason)
            if not case.joins:
                assert study.status_code == 404, case.name
            expected_keys.add(key)
        elif case.expect == "read":  # a retired form, read as meant
            assert study.status_code == 200, case.name
            assert all(word in study.get_json()["started"] for word in case.words), case.name
        else:  # not DICOM by the folder source's rule: counted, not indexed or quarantined
            assert case.expect == "skipped"
            assert location not in quarantine, case.name
    assert set(quarantine) == expected_keys
    assert summary.failed == len(expected_keys)
    assert summary.source_stats["skipped"] == sum(c.expect == "skipped" for c in CASES)
    assert all("internal" not in entry.reason for entry in quarantine.values())

    for name in INTACT:  # the intact files' studies are all there
        uid = str(real(name).StudyInstanceUID)
        assert client.get(f"/fhir/ImagingStudy/{uid}").status_code == 200, name

    studies = _every(client, "ImagingStudy")
    for resource in studies + _every(client, "Patient") + _every(client, "Endpoint"):
        valid_r4(resource)
    assert summary.repaired == sum(1 for s in studies if s.get("note"))

    again = sync_source(store, config.sources[0])  # the same archive: the same outcome, nothing rewritten
    assert (again.new, again.updated, again.failed, again.released) == (0, 0, summary.failed, 0)
    assert {e.key: e.reason for e in store.quarantine.entries(SOURCE)} == {k: e.reason for k, e in quarantine.items()}
    store.close()
    _check_logs(caplog)


def test_random_byte_damage_never_stops_the_sync(tmp_path, store_url, write_config, valid_r4, caplog):
    """Bytes of real headers overwritten at random: whatever each file becomes, the sync reads
    the rest, and what it emits is valid R4."""
    caplog.set_level(logging.INFO)
    archive = tmp_path / "archive"
    archive.mkdir()
    rng = random.Random(20240611)
    bases = [
        "CT_small.dcm",
        "MR_small.dcm",
        "rtplan.dcm",
        "MR_small_bigendian.dcm",
        "test-SR.dcm",
        "chrH31.dcm",
        "chrX1.dcm",
    ]
    for n in range(60):
        ds = real(rng.choice(bases))
        ds.StudyInstanceUID = f"{ds.StudyInstanceUID}.{n}"[:64]
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{n}"[:64]
        data = bytearray(part10(ds))
        start = dataset_start(data)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(start, min(len(data), start + 1500))] = rng.randrange(256)
        (archive / f"mutant_{n:02d}.dcm").write_bytes(bytes(data))
    config = _config(write_config, store_url, archive)
    store = Store.from_config(config)
    summary = sync_source(store, config.sources[0])
    assert summary.error is None
    quarantine = store.quarantine.entries(SOURCE)
    assert len(quarantine) == summary.failed
    assert all(_names_the_problem(e.reason) and "internal" not in e.reason for e in quarantine)
    client = create_app(config, store).test_client()
    studies = _every(client, "ImagingStudy")
    assert len(studies) == summary.new
    for resource in studies + _every(client, "Patient"):
        valid_r4(resource)
    store.close()
    _check_logs(caplog)


# ---------------------------------------------------------------------- DICOM JSON from an archive

CTX = MappingContext(
    source="main-pacs", timezone="Europe/Berlin", patient_id_system="urn:oid:2.999.10", identity=TEST_IDENTITY
)


def _base_record() -> StudyRecord:
    """CT_small as an archive's DICOM JSON answers would give it: study, series, instance."""
    from pydicom.tag import Tag

    from app.mapping import tags
    from tests.support.damaged_corpus import STUDY_UID

    ds = real("CT_small.dcm")
    study, _ = dataset_to_dicom_json(ds, sorted(Tag(t) for t in {**tags.PATIENT, **tags.STUDY}))
    series, _ = dataset_to_dicom_json(ds, sorted(Tag(t) for t in tags.SERIES))
    instance, _ = dataset_to_dicom_json(ds, sorted(Tag(t) for t in tags.INSTANCE))
    return StudyRecord(
        uid=str(ds[STUDY_UID].value), attrs=study, series=[SeriesRecord(attrs=series, instances=[instance])]
    )


def at(level: str, tag: str, element):
    """A damage: set `tag` to `element` in the study, series or instance attributes."""

    def damage(record: StudyRecord) -> None:
        target = {
            "study": lambda: record.attrs,
            "series": lambda: record.series[0].attrs,
            "instance": lambda: record.series[0].instances[0],
        }[level]()
        target[tag] = element

    return damage


def study_uid(value):
    def damage(record: StudyRecord) -> None:
        record.attrs["0020000D"] = {"vr": "UI", "Value": [value]}
        record.uid = value

    return damage


def replace(level: str, value):
    def damage(record: StudyRecord) -> None:
        if level == "study":
            record.attrs = value
        elif level == "series":
            record.series[0].attrs = value
        else:
            record.series[0].instances[0] = value

    return damage


def removed(level: str, tag: str):
    def damage(record: StudyRecord) -> None:
        target = {"study": record.attrs, "series": record.series[0].attrs, "instance": record.series[0].instances[0]}[
            level
        ]
        del target[tag]
        if tag == "0020000D":
            record.uid = None

    return damage


def other_ids(count: int):
    return {"vr": "SQ", "Value": [{"00100020": {"vr": "LO", "Value": [f"OTHER-{n}"]}} for n in range(count)]}


JSON_CASES = [
    # dates and times
    (
        "study_date_month_13",
        at("study", "00080020", {"vr": "DA", "Value": ["20231345"]}),
        "repaired",
        ("StudyDate", "20231345"),
    ),
    (
        "study_date_year_only",
        at("study", "00080020", {"vr": "DA", "Value": ["2023"]}),
        "repaired",
        ("StudyDate", "'2023'"),
    ),
    (
        "study_date_as_number",
        at("study", "00080020", {"vr": "DA", "Value": [20230101]}),
        "repaired",
        ("StudyDate", "not strings"),
    ),
    (
        "study_date_bare_string",
        at("study", "00080020", "20230101"),
        "repaired",
        ("StudyDate", "not a DICOM JSON attribute"),
    ),
    (
        "study_date_value_not_a_list",
        at("study", "00080020", {"vr": "DA", "Value": "20230101"}),
        "repaired",
        ("StudyDate", "not a list"),
    ),
    (
        "study_time_hour_25",
        at("study", "00080030", {"vr": "TM", "Value": ["256199"]}),
        "repaired",
        ("StudyTime", "256199"),
    ),
    ("study_time_colon", at("study", "00080030", {"vr": "TM", "Value": ["12:30"]}), "read", ("T12:30:00",)),
    (
        "series_date_feb_30",
        at("series", "00080021", {"vr": "DA", "Value": ["20230230"]}),
        "repaired",
        ("SeriesDate", "20230230"),
    ),
    (
        "tz_offset_out_of_range",
        at("study", "00080201", {"vr": "SH", "Value": ["+2500"]}),
        "repaired",
        ("TimezoneOffsetFromUTC", "+2500"),
    ),
    (
        "tz_offset_number",
        at("study", "00080201", {"vr": "SH", "Value": [100]}),
        "repaired",
        ("TimezoneOffsetFromUTC", "not strings"),
    ),
    # wrong VRs
    ("study_date_vr_us", at("study", "00080020", {"vr": "US", "Value": [20231]}), "repaired", ("StudyDate", "VR US")),
    (
        "study_date_inline_binary",
        at("study", "00080020", {"vr": "OB", "InlineBinary": "MjAyMzAxMDE="}),
        "repaired",
        ("StudyDate", "VR OB"),
    ),
    (
        "patient_name_no_vr",
        at("study", "00100010", {"Value": [{"Alphabetic": "Doe^John"}]}),
        "repaired",
        ("PatientName", "no VR"),
    ),
    ("modality_as_sequence", at("series", "00080060", {"vr": "SQ", "Value": [{}]}), "repaired", ("Modality", "VR SQ")),
    (
        "instance_number_vr_da",
        at("instance", "00200013", {"vr": "DA", "Value": ["20230101"]}),
        "repaired",
        ("InstanceNumber", "VR DA"),
    ),
    # bad text: what a wrong character set or a broken archive sends
    (
        "patient_name_lone_surrogate",
        at("study", "00100010", {"vr": "PN", "Value": [{"Alphabetic": "M\ud800ller^Hans"}]}),
        "repaired",
        ("PatientName", "control characters"),
    ),
    (
        "patient_name_escape_bytes",
        at("study", "00100010", {"vr": "PN", "Value": [{"Alphabetic": "Yamada^\x1b$B;3ED"}]}),
        "repaired",
        ("PatientName", "control characters"),
    ),
    (
        "description_control_chars",
        at("study", "00081030", {"vr": "LO", "Value": ["Head\x07CT"]}),
        "repaired",
        ("StudyDescription", "control characters"),
    ),
    (
        "patient_name_number",
        at("study", "00100010", {"vr": "PN", "Value": [{"Alphabetic": 5}]}),
        "repaired",
        ("PatientName", "not person names"),
    ),
    (
        "patient_name_list_group",
        at("study", "00100010", {"vr": "PN", "Value": [{"Alphabetic": "Doe", "Ideographic": ["x"]}]}),
        "repaired",
        ("PatientName", "not person names"),
    ),
    (
        "patient_name_bulk_data",
        at("study", "00100010", {"vr": "PN", "BulkDataURI": "http://pacs.example/bulk/1"}),
        "repaired",
        ("PatientName", "bulk data"),
    ),
    # UIDs
    (
        "study_uid_letters",
        study_uid("1.2.826.0.1.3680043.8.498.12abc.1"),
        "repaired",
        ("StudyInstanceUID", "not a valid DICOM UID"),
    ),
    (
        "study_uid_trailing_space",
        at("study", "0020000D", {"vr": "UI", "Value": ["1.3.6.1.4.1.5962.1.2.1.20040119072730.12322 "]}),
        "repaired",
        ("StudyInstanceUID", "padding"),
    ),
    (
        "study_uid_over_64",
        study_uid("1.2.826.0.1.3680043.8.498." + "1234567890" * 5),
        "rejected",
        ("StudyInstanceUID", "not a valid FHIR id"),
    ),
    ("study_uid_inner_nul", study_uid("1.2.826.0.1.3680043\x00.8.498.77"), "rejected", ("StudyInstanceUID",)),
    ("study_uid_missing", removed("study", "0020000D"), "rejected", ("StudyInstanceUID",)),
    ("series_uid_missing", removed("series", "0020000E"), "rejected", ("SeriesInstanceUID",)),
    ("series_not_an_object", replace("series", ["junk"]), "rejected", ("SeriesInstanceUID",)),
    ("sop_uid_missing", removed("instance", "00080018"), "repaired", ("SOPInstanceUID",)),
    ("instance_not_an_object", replace("instance", "junk"), "repaired", ("not a DICOM JSON object",)),
    (
        "sop_class_control_char",
        at("instance", "00080016", {"vr": "UI", "Value": ["1.2.840\x01.10008.5.1.4.1.1.2"]}),
        "repaired",
        ("SOPClassUID",),
    ),
    ("study_not_an_object", replace("study", ["junk"]), "repaired", ("not a DICOM JSON object",)),
    # oversized
    (
        "patient_name_100k",
        at("study", "00100010", {"vr": "PN", "Value": [{"Alphabetic": "Oversized^" * 10000}]}),
        "repaired",
        ("PatientName", "truncated"),
    ),
    (
        "other_patient_ids_10000",
        at("study", "00101002", other_ids(10000)),
        "repaired",
        ("OtherPatientIDsSequence", "10000"),
    ),
    (
        "modalities_10000",
        at("study", "00080061", {"vr": "CS", "Value": [f"M{n}" for n in range(10000)]}),
        "repaired",
        ("ModalitiesInStudy", "10000"),
    ),
    # odd values
    (
        "other_ids_not_items",
        at("study", "00101002", {"vr": "SQ", "Value": ["OTHER-1", 5]}),
        "repaired",
        ("OtherPatientIDsSequence", "not items"),
    ),
    (
        "modalities_mixed",
        at("study", "00080061", {"vr": "CS", "Value": [None, 5, "CT"]}),
        "repaired",
        ("ModalitiesInStudy", "not strings"),
    ),
    ("patient_sex_x", at("study", "00100040", {"vr": "CS", "Value": ["X"]}), "repaired", ("PatientSex", "'X'")),
    (
        "birth_date_in_future",
        at("study", "00100030", {"vr": "DA", "Value": ["29991231"]}),
        "repaired",
        ("PatientBirthDate", "after"),
    ),
    (
        "birth_date_invalid",
        at("study", "00100030", {"vr": "DA", "Value": ["19801332"]}),
        "repaired",
        ("PatientBirthDate",),
    ),
    (
        "study_instances_word",
        at("study", "00201208", {"vr": "IS", "Value": ["many"]}),
        "repaired",
        ("NumberOfStudyRelatedInstances",),
    ),
    (
        "study_instances_bool",
        at("study", "00201208", {"vr": "IS", "Value": [True]}),
        "repaired",
        ("NumberOfStudyRelatedInstances",),
    ),
    (
        "study_instances_huge",
        at("study", "00201208", {"vr": "IS", "Value": [2**40]}),
        "repaired",
        ("NumberOfStudyRelatedInstances",),
    ),
    (
        "study_instances_nan",
        at("study", "00201208", {"vr": "IS", "Value": [float("nan")]}),
        "repaired",
        ("NumberOfStudyRelatedInstances",),
    ),
    ("series_number_1a", at("series", "00200011", {"vr": "IS", "Value": ["1a"]}), "repaired", ("SeriesNumber",)),
    (
        "instance_number_float",
        at("instance", "00200013", {"vr": "IS", "Value": [1.5]}),
        "repaired",
        ("InstanceNumber",),
    ),
    (
        "procedure_code_value_object",
        at(
            "study",
            "00081032",
            {
                "vr": "SQ",
                "Value": [
                    {"00080100": {"vr": "SH", "Value": [{"x": 1}]}, "00080104": {"vr": "LO", "Value": ["CT head"]}}
                ],
            },
        ),
        "repaired",
        ("CodeValue", "not strings"),
    ),
    (
        "accession_number_in_request_as_number",
        at("study", "00400275", {"vr": "SQ", "Value": [{"00080050": {"vr": "SH", "Value": [12345]}}]}),
        "repaired",
        ("AccessionNumber", "not strings"),
    ),
]


def test_the_json_base_record_maps_without_repairs():
    assert map_study(_base_record(), CTX).repairs == []


@pytest.mark.parametrize("name,damage,expect,words", JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_damaged_dicom_json_is_repaired_or_rejected_with_its_reason(name, damage, expect, words, valid_r4):
    record = _base_record()
    damage(record)
    before = copy.deepcopy(record)
    if expect == "rejected":
        with pytest.raises(MappingError) as raised:
            map_study(record, CTX)
        assert all(word in raised.value.reason for word in words), raised.value.reason
        return
    mapped = map_study(record, CTX)
    if expect == "read":
        assert all(word in mapped.imaging_study["started"] for word in words)
    else:
        assert any(all(word in note for word in words) for note in mapped.repairs), mapped.repairs
        notes = [note["text"] for note in mapped.imaging_study["note"]]
        assert any(all(word in note for word in words) for note in notes)
    for resource in (mapped.imaging_study, mapped.patient):
        valid_r4(resource)
        orjson.dumps(resource)  # what the store writes: no lone surrogates, no NaN
        assert "\x00" not in orjson.dumps(resource).decode()
    assert repr(record) == repr(before)  # the archive's answer is not changed in place


def test_warnings_of_other_code_are_not_repairs_of_the_file(monkeypatch):
    """A ResourceWarning from garbage collection, or another thread's DeprecationWarning,
    raised while a file's values are converted, is not something pydicom repaired in the
    file: the same file must map the same on every sync. The stray warnings are injected
    into pydicom's conversion (their real timing cannot be forced)."""
    import warnings

    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.dataelem import DataElement

    ds = dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    clean = dataset_to_dicom_json(ds)
    original = DataElement.to_json_dict

    def with_stray_warnings(self, *args, **kwargs):
        warnings.warn("unclosed socket", ResourceWarning, stacklevel=2)
        warnings.warn("old API", DeprecationWarning, stacklevel=2)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DataElement, "to_json_dict", with_stray_warnings)
    assert dataset_to_dicom_json(ds) == clean
