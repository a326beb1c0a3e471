"""Mapping of REAL DICOM files (those shipped with pydicom) against the FHIR R4 ImagingStudy mapping table.

Expected values are read from the pydicom Dataset independently of the mapping, or are the
literal values of the file where the mapping table names them (docs/mapping.md).
"""

from __future__ import annotations

import io
import os
import warnings
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from functools import cache

import pydicom
import pytest
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.patient import Patient
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.sr.codedict import codes as sr_codes

from app.identity import patient_id, patient_id_for_study, patient_key
from app.mapping import map_endpoint, map_study
from app.mapping.context import MappingContext
from app.sources.base import SeriesRecord, StudyRecord
from app.sources.dicom_json import dataset_to_dicom_json
from tests.support.keys import TEST_IDENTITY, TEST_KEY

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCT = "http://snomed.info/sct"
CTX = MappingContext(
    source="pydicom-files",
    timezone="America/New_York",
    patient_id_system="urn:oid:2.999.1",
    wado_url="http://pacs.example/dicom-web/",
    identity=TEST_IDENTITY,
)


def _read(path: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError:  # files without preamble/meta
            return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def build_records(datasets) -> dict[str, StudyRecord]:
    """Group datasets into StudyRecords the way a folder source does: study attributes from
    the first file of the study, series attributes from the first file of the series, one
    DICOM JSON object per file as instances."""
    study_attrs: dict[str, dict] = {}
    grouped: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for ds in datasets:
        as_json, _ = dataset_to_dicom_json(ds)
        study_uid = (as_json.get("0020000D", {}).get("Value") or [None])[0]
        if not study_uid:
            continue
        series_uid = (as_json.get("0020000E", {}).get("Value") or [""])[0]
        study_attrs.setdefault(study_uid, as_json)
        grouped[study_uid][series_uid].append(as_json)
    return {
        uid: StudyRecord(
            uid=uid,
            attrs=study_attrs[uid],
            series=[SeriesRecord(attrs=files[0], instances=files) for files in series.values()],
        )
        for uid, series in grouped.items()
    }


@cache
def all_datasets() -> tuple:
    found = []
    for path in get_testdata_files():
        if os.path.isdir(path):
            continue
        try:
            ds = _read(path)
        except Exception:  # noqa: BLE001 - not DICOM at all (README, .json, .icc, dumps)
            continue
        if "StudyInstanceUID" in ds:
            found.append((os.path.basename(path), ds))
    return tuple(found)


@cache
def all_records() -> dict[str, StudyRecord]:
    return build_records(ds for _, ds in all_datasets())


def file_study(name: str):
    """(Dataset of the named test file, mapped study of its whole study)."""
    ds = _read(get_testdata_file(name))
    record = all_records()[ds.StudyInstanceUID]
    return ds, map_study(record, CTX)


def expected_started(da: str, tm: str, offset: str) -> str:
    clock = tm.split(".")[0]
    sign = -1 if offset[0] == "-" else 1
    tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
    return datetime.strptime(da + clock, "%Y%m%d%H%M%S").replace(tzinfo=tz).isoformat()


# --- every readable file ------------------------------------------------------------------


@pytest.mark.slow
def test_enough_real_files_are_read():
    assert len(all_datasets()) > 100
    assert len(all_records()) > 20


def test_every_study_of_every_readable_file_validates_as_r4():
    failures = []
    for uid, record in all_records().items():
        mapped = map_study(record, CTX)
        try:
            ImagingStudy.model_validate(mapped.imaging_study)
            Patient.model_validate(mapped.patient)
        except Exception as exc:  # noqa: BLE001 - collect all, fail once
            failures.append((uid, str(exc)[:300]))
        assert mapped.imaging_study["id"] == uid
        assert mapped.imaging_study["subject"] == {"reference": "Patient/" + mapped.patient["id"]}
    assert failures == []


def test_endpoint_validates_as_r4():
    Endpoint.model_validate(map_endpoint(CTX))
    Endpoint.model_validate(map_endpoint(MappingContext("folder", "UTC", "urn:x", identity=TEST_IDENTITY)))


def test_every_instance_of_every_file_is_in_its_study():
    by_study = defaultdict(set)
    for _, ds in all_datasets():
        by_study[ds.StudyInstanceUID].add((ds.SeriesInstanceUID, ds.SOPInstanceUID))
    for uid, expected in by_study.items():
        study = map_study(all_records()[uid], CTX).imaging_study
        got = {(s["uid"], i["uid"]) for s in study["series"] for i in s.get("instance", [])}
        assert got == expected
        assert study["numberOfInstances"] == len(expected)
        assert study["numberOfSeries"] == len({s for s, _ in expected})


# --- CT_small.dcm ---------------------------------------------------------------------------


def test_ct_small_imaging_study():
    ds, mapped = file_study("CT_small.dcm")
    study = mapped.imaging_study
    assert study["resourceType"] == "ImagingStudy"
    assert study["id"] == ds.StudyInstanceUID
    assert study["identifier"][0] == {"system": "urn:dicom:uid", "value": "urn:oid:" + ds.StudyInstanceUID}
    assert ds.AccessionNumber == ""  # empty in the file: no accession identifier, no basedOn
    assert len(study["identifier"]) == 1 and "basedOn" not in study
    assert study["status"] == "available"
    assert [m["code"] for m in study["modality"]] == [ds.Modality] == ["CT"]
    assert study["modality"][0]["system"] == DCM
    assert study["started"] == "2004-01-19T07:27:30-05:00"
    assert study["started"] == expected_started(ds.StudyDate, ds.StudyTime, ds.TimezoneOffsetFromUTC)
    assert study["description"] == ds.StudyDescription
    assert study["endpoint"] == [{"reference": "Endpoint/pydicom-files"}]
    assert "referrer" not in study  # ReferringPhysicianName is empty in the file

    series = study["series"][0]
    assert series["uid"] == ds.SeriesInstanceUID
    assert series["number"] == int(ds.SeriesNumber)
    assert series["modality"]["code"] == ds.Modality
    # series times are local too: the study's offset applies
    assert series["started"] == expected_started(ds.SeriesDate, ds.SeriesTime, ds.TimezoneOffsetFromUTC)
    instance = series["instance"][0]
    assert instance["uid"] == ds.SOPInstanceUID
    assert instance["sopClass"]["system"] == "urn:ietf:rfc:3986"
    assert instance["sopClass"]["code"] == "urn:oid:" + ds.SOPClassUID
    assert instance["sopClass"]["display"] == ds.SOPClassUID.name
    assert instance["number"] == int(ds.InstanceNumber)
    assert instance["title"] == "\\".join(ds.ImageType)


def test_ct_small_patient():
    ds, mapped = file_study("CT_small.dcm")
    patient = mapped.patient
    assert ds.PatientID == "1CT1"
    primary = patient["identifier"][0]
    assert primary == {"system": CTX.patient_id_system, "value": ds.PatientID}
    others = [item.PatientID for item in ds.OtherPatientIDsSequence]
    assert others == ["ABCD1234", "1234ABCD"]
    assert [i["value"] for i in patient["identifier"][1:]] == others
    assert patient["id"] == patient_id(CTX.patient_id_system, ds.PatientID, TEST_KEY)
    assert patient_key(patient, TEST_IDENTITY) == (CTX.patient_id_system, "1CT1")
    assert ds.PatientSex == "O" and patient["gender"] == "other"
    assert patient["name"] == [{"family": ds.PatientName.family_name, "given": [ds.PatientName.given_name]}]
    assert "birthDate" not in patient  # empty in the file


# --- MR_small.dcm ---------------------------------------------------------------------------


def test_mr_small():
    ds, mapped = file_study("MR_small.dcm")
    study, patient = mapped.imaging_study, mapped.patient
    assert study["started"] == expected_started(ds.StudyDate, ds.StudyTime, ds.TimezoneOffsetFromUTC)
    assert study["started"].endswith("-04:00")
    assert study["modality"][0]["code"] == "MR" == ds.Modality
    # NameOfPhysiciansReadingStudy "----" is what the file says
    assert study["interpreter"] == [{"display": str(ds.NameOfPhysiciansReadingStudy)}]
    assert patient["gender"] == "female" and ds.PatientSex == "F"
    assert patient["identifier"][0]["value"] == ds.PatientID
    series = study["series"][0]
    assert "started" not in series  # SeriesDate empty
    # Operators' Name becomes a performer without a function
    assert series["performer"] == [{"actor": {"display": str(ds.OperatorsName)}}]


# --- files with request attributes, body part, content label, concept name ---------------


def test_examples_overlay_request_attributes_and_body_part():
    ds, mapped = file_study("examples_overlay.dcm")
    study = mapped.imaging_study
    accession = study["identifier"][1]
    assert accession["value"] == ds.AccessionNumber
    assert accession["type"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
        "code": "ACSN",
        "display": "Accession ID",
    }
    assert "system" not in accession  # no issuer, no ctx.accession_system
    assert study["basedOn"] == [{"type": "ServiceRequest", "identifier": accession}]
    assert ds.RequestAttributesSequence[0].RequestedProcedureID == "8000000000330109"
    # no time zone offset in the file: the source's zone (New York, EST in November)
    assert study["started"] == "2005-11-30T13:26:45.921-05:00"
    series = study["series"][0]
    assert ds.BodyPartExamined == "ABDOMEN"
    assert series["bodySite"] == {
        "system": SCT,
        "code": sr_codes.cid4031.Abdomen.value,
        "display": sr_codes.cid4031.Abdomen.meaning,
    }
    assert series["description"] == ds.SeriesDescription
    assert mapped.patient["birthDate"] == "1111-11-11"  # "11111111" is a valid DA


def test_whole_body_body_part_from_nm_file():
    ds, mapped = file_study("JPEG2000.dcm")
    assert ds.BodyPartExamined == "WHOLE BODY"  # Annex L spells it WHOLEBODY
    series = next(s for s in mapped.imaging_study["series"] if s["uid"] == ds.SeriesInstanceUID)
    assert series["bodySite"]["code"] == sr_codes.cid4031.EntireBody.value


def test_content_label_is_the_instance_title():
    ds, mapped = file_study("liver_1frame.dcm")
    instances = [i for s in mapped.imaging_study["series"] for i in s.get("instance", [])]
    instance = next(i for i in instances if i["uid"] == ds.SOPInstanceUID)
    assert instance["title"] == ds.ContentLabel


def test_sr_document_title_from_concept_name_and_own_patient_without_id():
    ds, mapped = file_study("reportsi.dcm")
    instances = [i for s in mapped.imaging_study["series"] for i in s.get("instance", [])]
    instance = next(i for i in instances if i["uid"] == ds.SOPInstanceUID)
    assert instance["title"] == ds.ConceptNameCodeSequence[0].CodeMeaning
    assert ds.PatientID == ""
    patient = mapped.patient
    assert patient["id"] == patient_id_for_study(ds.StudyInstanceUID, TEST_KEY)
    assert "identifier" not in patient and patient_key(patient, TEST_IDENTITY) is None
    assert mapped.imaging_study["referrer"] == {"display": "First Name Last Name"}
    assert str(ds.ReferringPhysicianName) == "Last Name^First Name"


def test_dicomdir_ct_study_counts_and_modalities_in_study():
    # a real multi-file study: the CT series of patient 77654033 from pydicom's DICOMDIR set
    datasets = [ds for name, ds in all_datasets() if ds.get("PatientID") == "77654033" and ds.Modality == "CT"]
    assert len(datasets) >= 2
    uid = datasets[0].StudyInstanceUID
    study = map_study(all_records()[uid], CTX).imaging_study
    files = [ds for _, ds in all_datasets() if ds.StudyInstanceUID == uid]
    assert study["numberOfInstances"] == len({d.SOPInstanceUID for d in files})
    assert study["numberOfSeries"] == len({d.SeriesInstanceUID for d in files})
    listed = files[0].ModalitiesInStudy
    listed = [listed] if isinstance(listed, str) else list(listed)
    assert [m["code"] for m in study["modality"]] == listed
    # series sorted by Series Number, instances by Instance Number
    numbers = [s.get("number") for s in study["series"]]
    assert numbers == sorted(numbers)
    for series in study["series"]:
        inst_numbers = [i["number"] for i in series.get("instance", [])]
        assert inst_numbers == sorted(inst_numbers)
    # TimezoneOffsetFromUTC "+0000" is an explicit offset, written +00:00, never "Z"
    assert study["started"].endswith("+00:00")


# --- ideographic and phonetic names through pydicom's character set handling --------------


def _roundtrip(ds) -> pydicom.Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue())), buffer.getvalue()


def test_japanese_name_iso2022_ir87_three_groups():
    ds = _read(get_testdata_file("CT_small.dcm"))
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"  # PS3.5 H.3.1
    read_back, raw = _roundtrip(ds)
    assert b"\x1b$B;3ED\x1b(B" in raw  # encoded with ISO 2022 escapes, as in PS3.5 H.3.1
    mapped = map_study(build_records([read_back])[read_back.StudyInstanceUID], CTX)
    names = mapped.patient["name"]
    pn = read_back.PatientName
    ext = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"
    assert names == [
        {"family": pn.family_name, "given": [pn.given_name]},
        {
            "extension": [{"url": ext, "valueCode": "IDE"}],
            "family": pn.ideographic.split("^")[0],
            "given": [pn.ideographic.split("^")[1]],
        },
        {
            "extension": [{"url": ext, "valueCode": "SYL"}],
            "family": pn.phonetic.split("^")[0],
            "given": [pn.phonetic.split("^")[1]],
        },
    ]
    assert names[1]["family"] == "山田"
    Patient.model_validate(mapped.patient)


def test_chinese_name_utf8_empty_phonetic_group():
    ds = _read(get_testdata_file("MR_small.dcm"))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Wang^XiaoDong=王^小東="  # PS3.5 I.2
    read_back, _ = _roundtrip(ds)
    mapped = map_study(build_records([read_back])[read_back.StudyInstanceUID], CTX)
    names = mapped.patient["name"]
    assert len(names) == 2  # the empty phonetic group gives no HumanName
    assert names[1]["family"] == "王" and names[1]["given"] == ["小東"]
    assert names[1]["extension"][0]["valueCode"] == "IDE"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "examples_overlay.dcm"])
def test_same_file_maps_identically_twice(name):
    ds = _read(get_testdata_file(name))
    record = all_records()[ds.StudyInstanceUID]
    first, second = map_study(record, CTX), map_study(record, CTX)
    assert first == second
    assert list(first.imaging_study) == list(second.imaging_study)
