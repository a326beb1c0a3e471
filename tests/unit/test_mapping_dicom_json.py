"""Hard cases of the DICOM JSON -> FHIR R4 mapping, on hand-built DICOM JSON (PS3.18 F.2)."""

from __future__ import annotations

import copy
import json
import random

import pytest
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.patient import Patient
from pydicom.sr.codedict import codes as sr_codes

from app.identity import patient_id, patient_id_for_study, patient_key
from app.mapping import MappedStudy, MappingError, map_endpoint, map_study
from app.mapping.context import MappingContext
from app.mapping.values import MAX_TEXT
from app.sources.base import SeriesRecord, StudyRecord
from tests.support.keys import TEST_IDENTITY, TEST_KEY

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SCT = "http://snomed.info/sct"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
CTX = MappingContext(
    source="main-pacs",
    timezone="Europe/Berlin",
    patient_id_system="urn:oid:2.999.10",
    issuer_systems={"HOSPA": "urn:oid:1.2.3.4", "ACC-LOCAL": "http://hospa.example/accession"},
    wado_url="https://pacs.example/dicom-web/",
    identity=TEST_IDENTITY,
)


def el(vr: str, *values) -> dict:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def pn(alphabetic: str, ideographic: str | None = None, phonetic: str | None = None) -> dict:
    value = {"Alphabetic": alphabetic}
    if ideographic is not None:
        value["Ideographic"] = ideographic
    if phonetic is not None:
        value["Phonetic"] = phonetic
    return value


def instance(uid: str, number: int | None = None, **extra) -> dict:
    attrs = {"00080016": el("UI", CT_IMAGE), "00080018": el("UI", uid)}
    if number is not None:
        attrs["00200013"] = el("IS", number)
    attrs.update(extra)
    return attrs


def series(uid: str, number: int | None = 1, modality: str | None = "CT", instances=(), **extra) -> SeriesRecord:
    attrs = {"0020000E": el("UI", uid)}
    if number is not None:
        attrs["00200011"] = el("IS", number)
    if modality is not None:
        attrs["00080060"] = el("CS", modality)
    attrs.update(extra)
    return SeriesRecord(attrs=attrs, instances=list(instances))


def record(series_list=None, uid: str = STUDY_UID, **extra) -> StudyRecord:
    attrs = {
        "0020000D": el("UI", uid),
        "00100010": el("PN", pn("Doe^Jane")),
        "00100020": el("LO", "MRN-0042"),
        "00100040": el("CS", "F"),
    }
    attrs.update(extra)
    if series_list is None:
        series_list = [series(uid + ".1", 1, instances=[instance(uid + ".1.1", 1)])]
    return StudyRecord(uid=uid, attrs=attrs, series=series_list)


def mapped(rec: StudyRecord, ctx: MappingContext = CTX) -> MappedStudy:
    result = map_study(rec, ctx)
    ImagingStudy.model_validate(result.imaging_study)
    Patient.model_validate(result.patient)
    return result


# --- started: dates, times and zones --------------------------------------------------------


@pytest.mark.parametrize(
    "date, time, offset, zone, expected",
    [
        ("20230715", "101500", None, "Europe/Berlin", "2023-07-15T10:15:00+02:00"),  # CEST
        ("20230115", "101500", None, "Europe/Berlin", "2023-01-15T10:15:00+01:00"),  # CET
        ("20230715", "101500", "-0500", "Europe/Berlin", "2023-07-15T10:15:00-05:00"),
        ("20230715", "101500", None, "UTC", "2023-07-15T10:15:00+00:00"),
        ("20230715", "101500", None, "America/Los_Angeles", "2023-07-15T10:15:00-07:00"),
        ("20230715", "1015", None, "Europe/Berlin", "2023-07-15T10:15:00+02:00"),
        ("20230715", "10", None, "Europe/Berlin", "2023-07-15T10:00:00+02:00"),
        ("20230715", "101500.250000", None, "Europe/Berlin", "2023-07-15T10:15:00.25+02:00"),
        ("20230715", "10:15:00", None, "Europe/Berlin", "2023-07-15T10:15:00+02:00"),
        ("20230715", None, None, "Europe/Berlin", "2023-07-15"),
        ("20230715", None, "+0900", "Europe/Berlin", "2023-07-15"),
    ],
)
def test_started(date, time, offset, zone, expected):
    extra = {"00080020": el("DA", date)}
    if time is not None:
        extra["00080030"] = el("TM", time)
    if offset is not None:
        extra["00080201"] = el("SH", offset)
    ctx = MappingContext("main-pacs", zone, "urn:oid:2.999.10", identity=TEST_IDENTITY)
    result = mapped(record(**extra), ctx)
    assert result.imaging_study["started"] == expected
    assert not result.imaging_study["started"].endswith("Z")
    assert result.repairs == []


def test_invalid_study_date_is_left_out_with_a_note():
    result = mapped(record(**{"00080020": el("DA", "2004011"), "00080030": el("TM", "101500")}))
    assert "started" not in result.imaging_study
    assert "StudyDate '2004011' is not a valid DA; started left out" in result.repairs


@pytest.mark.parametrize("bad", ["20230230", "2023-13-01", "abcdefgh", "00000101"])
def test_impossible_dates_are_left_out(bad):
    result = mapped(record(**{"00080020": el("DA", bad)}))
    assert "started" not in result.imaging_study
    assert any(bad in note for note in result.repairs)


def test_invalid_time_keeps_the_date():
    result = mapped(record(**{"00080020": el("DA", "20230715"), "00080030": el("TM", "256100")}))
    assert result.imaging_study["started"] == "2023-07-15"
    assert any("StudyTime '256100' is not a valid TM" in note for note in result.repairs)


def test_invalid_offset_falls_back_to_the_source_zone():
    result = mapped(
        record(**{"00080020": el("DA", "20230715"), "00080030": el("TM", "101500"), "00080201": el("SH", "+2500")})
    )
    assert result.imaging_study["started"] == "2023-07-15T10:15:00+02:00"
    assert any("TimezoneOffsetFromUTC '+2500'" in note for note in result.repairs)


def test_series_started_uses_the_study_offset():
    rec = record(
        [series("1.2.3.1", 1, **{"00080021": el("DA", "20230101"), "00080031": el("TM", "235959")})],
        **{"00080201": el("SH", "+0530")},
    )
    started = mapped(rec).imaging_study["series"][0]["started"]
    assert started == "2023-01-01T23:59:59+05:30"


def test_unknown_time_zone_is_a_mapping_error():
    rec = record(**{"00080020": el("DA", "20230715"), "00080030": el("TM", "101500")})
    with pytest.raises(MappingError, match="Mars/Olympus"):
        map_study(rec, MappingContext("main-pacs", "Mars/Olympus", "urn:x", identity=TEST_IDENTITY))


# --- patient identifiers and identity -------------------------------------------------------


def qualifiers(entity_id=None, entity_type=None, type_code=None) -> dict:
    item = {}
    if entity_id is not None:
        item["00400032"] = el("UT", entity_id)
    if entity_type is not None:
        item["00400033"] = el("CS", entity_type)
    if type_code is not None:
        item["00400035"] = el("CS", type_code)
    return el("SQ", item)


@pytest.mark.parametrize(
    "issuer, quals, system, assigner",
    [
        (None, qualifiers("1.2.840.99.7", "ISO"), "urn:oid:1.2.840.99.7", None),
        ("HOSPA", qualifiers("1.2.840.99.7", "ISO"), "urn:oid:1.2.840.99.7", "HOSPA"),
        (None, qualifiers("https://hospital.example/mrn", "URI"), "https://hospital.example/mrn", None),
        ("HOSPA", None, "urn:oid:1.2.3.4", "HOSPA"),  # local issuer mapped in issuer_systems
        (
            "St. Mary's / Radiology",
            None,
            "urn:imaging-facade:issuer:St.%20Mary%27s%20%2F%20Radiology",
            "St. Mary's / Radiology",
        ),
        (None, None, "urn:oid:2.999.10", None),  # no issuer at all
        ("HOSPB", qualifiers("not an oid", "ISO"), "urn:imaging-facade:issuer:HOSPB", "HOSPB"),
    ],
)
def test_patient_identifier_system_from_issuer(issuer, quals, system, assigner):
    extra = {}
    if issuer is not None:
        extra["00100021"] = el("LO", issuer)
    if quals is not None:
        extra["00100024"] = quals
    result = mapped(record(**extra))
    identifier = result.patient["identifier"][0]
    assert identifier["system"] == system
    assert identifier["value"] == "MRN-0042"
    assert identifier.get("assigner") == ({"display": assigner} if assigner else None)
    assert result.patient["id"] == patient_id(system, "MRN-0042", TEST_KEY)
    assert patient_key(result.patient, TEST_IDENTITY) == (system, "MRN-0042")


def test_identifier_type_code_gives_identifier_type():
    result = mapped(record(**{"00100024": qualifiers("1.2.3", "ISO", "MR")}))
    assert result.patient["identifier"][0]["type"] == {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
    }


def test_same_patient_id_with_different_issuers_is_two_patients():
    a = mapped(record(**{"00100021": el("LO", "HOSPA")}))
    b = mapped(record(uid="1.2.826.0.1.3680043.8.498.2", **{"00100021": el("LO", "HOSPB")}))
    c = mapped(record(uid="1.2.826.0.1.3680043.8.498.3"))  # no issuer
    ids = {a.patient["id"], b.patient["id"], c.patient["id"]}
    assert len(ids) == 3
    assert a.imaging_study["subject"] != b.imaging_study["subject"]


def test_same_system_and_value_is_the_same_patient_whatever_the_issuer_spelling():
    # HOSPA is configured as urn:oid:1.2.3.4; another archive sends the OID itself
    a = mapped(record(**{"00100021": el("LO", "HOSPA")}))
    b = mapped(record(uid="1.2.826.0.1.3680043.8.498.2", **{"00100024": qualifiers("1.2.3.4", "ISO")}))
    assert a.patient["id"] == b.patient["id"]
    assert (
        patient_key(a.patient, CTX.identity) == patient_key(b.patient, CTX.identity) == ("urn:oid:1.2.3.4", "MRN-0042")
    )


def test_other_patient_ids_follow_the_same_issuer_rules():
    others = el(
        "SQ",
        {"00100020": el("LO", "X-1"), "00100021": el("LO", "HOSPA")},
        {"00100020": el("LO", "X-2"), "00100024": qualifiers("1.2.5", "ISO")},
        {"00100020": el("LO", "X-3")},
        {"00100020": el("LO", "MRN-0042")},  # same as the primary: not repeated
        {"00100021": el("LO", "HOSPA")},
    )  # no id: ignored
    result = mapped(record(**{"00101002": others}))
    pairs = [(i["system"], i["value"]) for i in result.patient["identifier"]]
    assert pairs == [
        ("urn:oid:2.999.10", "MRN-0042"),
        ("urn:oid:1.2.3.4", "X-1"),
        ("urn:oid:1.2.5", "X-2"),
        ("urn:oid:2.999.10", "X-3"),
    ]
    # the key is the primary identifier only
    assert result.patient["id"] == patient_id("urn:oid:2.999.10", "MRN-0042", TEST_KEY)


def test_study_without_patient_id_gets_its_own_patient():
    a = mapped(record(**{"00100020": el("LO")}))
    b = mapped(record(uid="1.2.826.0.1.3680043.8.498.2", **{"00100020": el("LO", "  ")}))
    assert a.patient["id"] == patient_id_for_study(STUDY_UID, TEST_KEY)
    assert a.patient["id"] != b.patient["id"]
    assert "identifier" not in a.patient and patient_key(a.patient, CTX.identity) is None
    assert a.patient["name"] == [{"family": "Doe", "given": ["Jane"]}]


# --- names, gender, birth date ----------------------------------------------------------


def test_person_name_with_three_groups():
    ext = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"
    value = pn("Yamada^Tarou^^Dr.^Jr.", "山田^太郎", "やまだ^たろう")
    result = mapped(record(**{"00100010": el("PN", value)}))
    assert result.patient["name"] == [
        {"family": "Yamada", "given": ["Tarou"], "prefix": ["Dr."], "suffix": ["Jr."]},
        {"extension": [{"url": ext, "valueCode": "IDE"}], "family": "山田", "given": ["太郎"]},
        {"extension": [{"url": ext, "valueCode": "SYL"}], "family": "やまだ", "given": ["たろう"]},
    ]


def test_person_name_as_a_plain_string_and_middle_names():
    result = mapped(record(**{"00100010": el("PN", "Smith^John^Paul=^=")}))
    assert result.patient["name"] == [{"family": "Smith", "given": ["John", "Paul"]}]


@pytest.mark.parametrize(
    "sex, gender",
    [("M", "male"), ("F", "female"), ("O", "other"), ("X", "unknown"), ("", "unknown"), (None, "unknown")],
)
def test_gender(sex, gender):
    extra = {"00100040": el("CS", sex) if sex is not None else el("CS")}
    assert mapped(record(**extra)).patient["gender"] == gender


def test_birth_date():
    assert mapped(record(**{"00100030": el("DA", "19710123")})).patient["birthDate"] == "1971-01-23"
    result = mapped(record(**{"00100030": el("DA", "19711323")}))
    assert "birthDate" not in result.patient
    assert "PatientBirthDate is not a valid DA; birthDate left out" in result.repairs


def test_repairs_never_contain_patient_names_or_ids():
    rec = record(
        **{
            "00100010": el("PN", pn("Secretname^Onlyhere")),
            "00100020": el("LO", "SECRET-ID-77"),
            "00100021": el("LO", "ISSUER-Z"),
            "00100030": el("DA", "19711323"),
            "00101002": el("SQ", {"00100020": el("LO", "OTHER-SECRET"), "00100024": qualifiers("x y", "URI")}),
            "00080020": el("DA", "2004011"),
            "00100024": qualifiers("bad oid", "ISO"),
        }
    )
    result = mapped(rec)
    assert result.repairs  # there is something to report
    text = "\n".join(result.repairs)
    for secret in ("Secretname", "Onlyhere", "SECRET-ID-77", "OTHER-SECRET", "19711323"):
        assert secret not in text


def test_display_names_of_physicians_are_readable():
    rec = record(
        **{"00080090": el("PN", pn("Doe^John^^Dr.")), "00081060": el("PN", pn("Roe^Richard"), pn("Poe^Edgar^Allan"))}
    )
    study = mapped(rec).imaging_study
    assert study["referrer"] == {"display": "Dr. John Doe"}
    assert study["interpreter"] == [{"display": "Richard Roe"}, {"display": "Edgar Allan Poe"}]


# --- accession --------------------------------------------------------------------------------


def issuer_of_accession(local=None, universal=None, kind=None) -> dict:
    item = {}
    if local is not None:
        item["00400031"] = el("UT", local)
    if universal is not None:
        item["00400032"] = el("UT", universal)
        item["00400033"] = el("CS", kind)
    return el("SQ", item)


@pytest.mark.parametrize(
    "issuer, ctx_system, system",
    [
        (issuer_of_accession(universal="1.2.840.5.5", kind="ISO"), None, "urn:oid:1.2.840.5.5"),
        (issuer_of_accession(universal="http://ris.example/acc", kind="URI"), None, "http://ris.example/acc"),
        (issuer_of_accession(local="ACC-LOCAL"), "urn:acc:default", "http://hospa.example/accession"),
        (issuer_of_accession(local="UNMAPPED"), "urn:acc:default", "urn:acc:default"),
        (None, "urn:acc:default", "urn:acc:default"),
        (None, None, None),
    ],
)
def test_accession_identifier_and_based_on(issuer, ctx_system, system):
    extra = {"00080050": el("SH", "ACC123")}
    if issuer is not None:
        extra["00080051"] = issuer
    ctx = MappingContext("main-pacs", "UTC", "urn:x", CTX.issuer_systems, ctx_system, identity=TEST_IDENTITY)
    study = mapped(record(**extra), ctx).imaging_study
    accession = study["identifier"][1]
    assert accession["value"] == "ACC123"
    assert accession["type"]["coding"][0]["code"] == "ACSN"
    assert accession["type"]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0203"
    assert accession.get("system") == system
    assert study["basedOn"] == [{"type": "ServiceRequest", "identifier": accession}]


def test_accession_and_reason_from_request_attributes_sequence():
    request = {
        "00080050": el("SH", "REQ-ACC"),
        "00401002": el("LO", "suspected fracture"),
        "0040100A": el(
            "SQ",
            {
                "00080100": el("SH", "T-D4000"),  # SNOMED RT: becomes SCT
                "00080102": el("SH", "SRT"),
                "00080104": el("LO", "Abdomen"),
            },
        ),
    }
    study = mapped(record(**{"00400275": el("SQ", request)})).imaging_study
    assert study["identifier"][1]["value"] == "REQ-ACC"
    assert study["reasonCode"] == [
        {"coding": [{"system": SCT, "code": "113345001", "display": "Abdomen"}], "text": "Abdomen"},
        {"text": "suspected fracture"},
    ]


def test_top_level_reason_text():
    study = mapped(record(**{"00401002": el("LO", "headache")})).imaging_study
    assert study["reasonCode"] == [{"text": "headache"}]


def test_procedure_code_sequence():
    items = el(
        "SQ",
        {"00080100": el("SH", "24627-2"), "00080102": el("SH", "LN"), "00080104": el("LO", "Chest CT")},
        {"00080100": el("SH", "CTCHEST"), "00080102": el("SH", "99HOSPA"), "00080104": el("LO", "CT chest local")},
    )
    result = mapped(record(**{"00081032": items}))
    assert result.imaging_study["procedureCode"] == [
        {"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "Chest CT"}], "text": "Chest CT"},
        {"coding": [{"code": "CTCHEST", "display": "CT chest local"}], "text": "CT chest local"},
    ]
    assert any("99HOSPA" in note for note in result.repairs)


# --- modality, body part, laterality, performers -----------------------------------------


def test_unknown_modality_is_kept_as_text():
    # not a DICOM code: no DCM system is claimed for it, the value stays readable
    rec = record([series("1.2.3.1", 1, modality="XYZ")])
    result = mapped(rec)
    assert result.imaging_study["series"][0]["modality"] == {"display": "XYZ"}
    assert result.imaging_study["modality"] == [{"display": "XYZ"}]
    assert any("'XYZ'" in note and "kept as text" in note for note in result.repairs)


def test_modality_synonyms_of_the_base_profile_become_dicom_codes():
    rec = record([series("1.2.3.1", 1, modality="PET"), series("1.2.3.2", 2, modality="mri")])
    result = mapped(rec)
    assert [s["modality"]["code"] for s in result.imaging_study["series"]] == ["PT", "MR"]
    assert all(s["modality"]["system"] == DCM for s in result.imaging_study["series"])
    assert result.repairs == []


def test_modalities_in_study_wins_over_series_modalities():
    rec = record([series("1.2.3.1", 1, "CT"), series("1.2.3.2", 2, "SR")], **{"00080061": el("CS", "CT", "PT")})
    assert [m["code"] for m in mapped(rec).imaging_study["modality"]] == ["CT", "PT"]


def test_study_modality_collects_distinct_series_modalities():
    rec = record([series("1.2.3.3", 3, "PT"), series("1.2.3.1", 1, "CT"), series("1.2.3.2", 2, "CT")])
    modalities = mapped(rec).imaging_study["modality"]
    assert [m["code"] for m in modalities] == ["CT", "PT"]
    assert all(m["system"] == DCM for m in modalities)
    assert modalities[0]["display"] == sr_codes.DCM.ComputedTomography.meaning


def test_missing_series_modality_becomes_ot():
    result = mapped(record([series("1.2.3.1", 1, modality=None)]))
    assert result.imaging_study["series"][0]["modality"]["code"] == "OT"
    assert any("Modality missing" in note for note in result.repairs)


@pytest.mark.parametrize(
    "value, concept",
    [
        ("CHEST", sr_codes.cid4031.Chest),
        ("ABDOMENPELVIS", sr_codes.cid4031.AbdomenAndPelvis),
        ("WHOLEBODY", sr_codes.cid4031.EntireBody),
        ("ANKLE", sr_codes.cid4031.AnkleJoint),
        ("CSPINE", sr_codes.cid4031.CervicalSpine),
        ("HIP", sr_codes.cid4031.HipJoint),
        ("KNEE", sr_codes.cid4031.Knee),
        ("chest", sr_codes.cid4031.Chest),
        ("BRAIN", sr_codes.SCT.Brain),
    ],
)
def test_body_part_examined_to_snomed(value, concept):
    result = mapped(record([series("1.2.3.1", 1, **{"00180015": el("CS", value)})]))
    assert result.imaging_study["series"][0]["bodySite"] == {
        "system": SCT,
        "code": concept.value,
        "display": concept.meaning,
    }
    assert result.repairs == []


def test_unknown_body_part_is_kept_as_display():
    result = mapped(record([series("1.2.3.1", 1, **{"00180015": el("CS", "LEFTTOE2")})]))
    assert result.imaging_study["series"][0]["bodySite"] == {"display": "LEFTTOE2"}
    assert any("LEFTTOE2" in note and "Annex L" in note for note in result.repairs)


@pytest.mark.parametrize("value, code", [("R", "419465000"), ("L", "419161000")])
def test_laterality(value, code):
    study = mapped(record([series("1.2.3.1", 1, **{"00200060": el("CS", value)})])).imaging_study
    assert study["series"][0]["laterality"]["code"] == code
    assert study["series"][0]["laterality"]["system"] == SCT


def test_laterality_from_image_laterality_when_instances_agree():
    same = [instance(f"1.2.3.1.{i}", i, **{"00200062": el("CS", "B")}) for i in (1, 2)]
    mixed = [
        instance("1.2.3.2.1", 1, **{"00200062": el("CS", "L")}),
        instance("1.2.3.2.2", 2, **{"00200062": el("CS", "R")}),
    ]
    study = mapped(record([series("1.2.3.1", 1, instances=same), series("1.2.3.2", 2, instances=mixed)])).imaging_study
    assert study["series"][0]["laterality"]["code"] == "51440002"
    assert "laterality" not in study["series"][1]


def test_invalid_laterality_is_left_out():
    result = mapped(record([series("1.2.3.1", 1, **{"00200060": el("CS", "X")})]))
    assert "laterality" not in result.imaging_study["series"][0]
    assert any("Laterality 'X'" in note for note in result.repairs)


def test_performers():
    rec = record(
        [
            series(
                "1.2.3.1",
                1,
                **{
                    "00081050": el("PN", pn("House^Gregory")),
                    "00081070": el("PN", pn("Tech^Tina"), pn("House^Gregory")),
                },
            )
        ]
    )
    performers = mapped(rec).imaging_study["series"][0]["performer"]
    assert performers == [
        {
            "function": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                        "code": "PRF",
                        "display": "performer",
                    }
                ]
            },
            "actor": {"display": "Gregory House"},
        },
        {"actor": {"display": "Tina Tech"}},
    ]


# --- series, instances, counts --------------------------------------------------------------


def test_instance_titles_in_order_of_precedence():
    concept = el(
        "SQ",
        {"00080100": el("SH", "18748-4"), "00080102": el("SH", "LN"), "00080104": el("LO", "Diagnostic imaging study")},
    )
    instances = [
        instance("1.2.3.1.1", 1, **{"00700080": el("CS", "LABEL"), "0040A043": concept}),
        instance("1.2.3.1.2", 2, **{"0040A043": concept, "00420010": el("ST", "Doc")}),
        instance("1.2.3.1.3", 3, **{"00420010": el("ST", "Doc"), "00080008": el("CS", "ORIGINAL", "PRIMARY")}),
        instance("1.2.3.1.4", 4, **{"00080008": el("CS", "ORIGINAL", "PRIMARY", "AXIAL")}),
        instance("1.2.3.1.5", 5),
    ]
    rows = mapped(record([series("1.2.3.1", 1, instances=instances)])).imaging_study
    titles = [i.get("title") for i in rows["series"][0]["instance"]]
    assert titles == ["LABEL", "Diagnostic imaging study", "Doc", "ORIGINAL\\PRIMARY\\AXIAL", None]


def test_series_and_instances_without_uid_are_left_out_with_a_note():
    broken_series = SeriesRecord(attrs={"00080060": el("CS", "CT")}, instances=[instance("1.2.3.9.1", 1)])
    instances = [
        instance("1.2.3.1.1", 1),
        {"00080016": el("UI", CT_IMAGE)},
        instance("x" * 65, 3),
        {"00080018": el("UI", "1.2.3.1.4")},
    ]
    result = mapped(record([series("1.2.3.1", 1, instances=instances), broken_series]))
    study = result.imaging_study
    assert [s["uid"] for s in study["series"]] == ["1.2.3.1"]
    assert [i["uid"] for i in study["series"][0]["instance"]] == ["1.2.3.1.1"]
    notes = "\n".join(result.repairs)
    assert "1 series without SeriesInstanceUID left out" in notes
    assert "without SOPInstanceUID" in notes
    assert "not a valid FHIR id" in notes
    assert "without SOPClassUID" in notes


def test_series_without_instances_is_kept_with_counts_from_attributes():
    # what QIDO-RS answers at study and series level, without instance queries
    rec = record(
        [series("1.2.3.1", 1, **{"00201209": el("IS", 120)}), series("1.2.3.2", 2, **{"00201209": el("IS", "30")})],
        **{"00201206": el("IS", 2), "00201208": el("IS", 150)},
    )
    study = mapped(rec).imaging_study
    assert [s["numberOfInstances"] for s in study["series"]] == [120, 30]
    assert all("instance" not in s for s in study["series"])
    assert study["numberOfSeries"] == 2 and study["numberOfInstances"] == 150


def test_counts_are_counted_when_not_answered():
    rec = record(
        [
            series("1.2.3.1", 1, instances=[instance("1.2.3.1.1", 1), instance("1.2.3.1.2", 2)]),
            series("1.2.3.2", 2, instances=[instance("1.2.3.2.1", 1)]),
            series("1.2.3.3", 3, **{"00201209": el("IS", 7)}),
        ]
    )
    study = mapped(rec).imaging_study
    assert [s["numberOfInstances"] for s in study["series"]] == [2, 1, 7]
    assert study["numberOfSeries"] == 3 and study["numberOfInstances"] == 10


def test_bad_numbers_are_left_out_with_a_note():
    rec = record([series("1.2.3.1", -4, instances=[instance("1.2.3.1.1", "abc")], **{"00201209": el("IS", "many")})])
    result = mapped(rec)
    entry = result.imaging_study["series"][0]
    assert "number" not in entry and "number" not in entry["instance"][0]
    assert entry["numberOfInstances"] == 1  # counted instead
    assert len(result.repairs) == 3


def test_duplicate_series_are_merged_and_duplicate_instances_dropped():
    rec = record(
        [
            series("1.2.3.1", 1, instances=[instance("1.2.3.1.1", 1)]),
            series("1.2.3.1", 1, instances=[instance("1.2.3.1.2", 2), instance("1.2.3.1.1", 1)]),
        ]
    )
    result = mapped(rec)
    assert len(result.imaging_study["series"]) == 1
    assert [i["uid"] for i in result.imaging_study["series"][0]["instance"]] == ["1.2.3.1.1", "1.2.3.1.2"]


def test_oversized_and_control_character_strings_are_repaired():
    rec = record(**{"00081030": el("LO", "A" * (MAX_TEXT + 10)), "00401002": el("LO", "bad\x07reason")})
    result = mapped(rec)
    assert len(result.imaging_study["description"]) == MAX_TEXT
    assert result.imaging_study["reasonCode"] == [{"text": "badreason"}]
    assert len(result.repairs) == 2


# --- determinism and purity ------------------------------------------------------------------


def _big_record() -> StudyRecord:
    series_list = []
    for s in range(1, 6):
        instances = [
            instance(f"1.2.3.{s}.{i}", i if i % 7 else None, **{"00080008": el("CS", "ORIGINAL", "PRIMARY")})
            for i in range(1, 30)
        ]
        series_list.append(
            series(
                f"1.2.3.{s}",
                s if s != 3 else None,
                "MR" if s % 2 else "CT",
                instances,
                **{"00180015": el("CS", "HEAD")},
            )
        )
    series_list.append(series("1.2.3.10", 2, "SR", [instance("1.2.3.10.1", 1)]))
    return record(series_list, **{"00080020": el("DA", "20230715"), "00080030": el("TM", "101500")})


def test_shuffled_series_and_instances_give_identical_output():
    reference = map_study(_big_record(), CTX)
    expected = json.dumps(reference.imaging_study)  # keeps key order
    rng = random.Random(7)
    for _ in range(5):
        rec = _big_record()
        rng.shuffle(rec.series)
        for entry in rec.series:
            rng.shuffle(entry.instances)
        again = map_study(rec, CTX)
        assert json.dumps(again.imaging_study) == expected
        assert json.dumps(again.patient) == json.dumps(reference.patient)
        assert again.repairs == reference.repairs


def test_sort_order_is_number_then_uid():
    study = map_study(_big_record(), CTX).imaging_study
    keys = [(s.get("number") is None, s.get("number", 0), s["uid"]) for s in study["series"]]
    assert keys == sorted(keys)
    assert [s["uid"] for s in study["series"]][:3] == ["1.2.3.1", "1.2.3.10", "1.2.3.2"]
    first = study["series"][0]["instance"]
    numbered = [i["number"] for i in first if "number" in i]
    assert numbered == sorted(numbered)
    assert all("number" not in i for i in first[len(numbered) :])  # unnumbered last


def test_mapping_does_not_change_its_input():
    rec = _big_record()
    before = copy.deepcopy(rec)
    map_study(rec, CTX)
    assert rec == before


def test_outputs_share_no_mutable_parts():
    first = map_study(record(**{"00080050": el("SH", "A1")}), CTX)
    first.imaging_study["identifier"][1]["type"]["coding"][0]["code"] = "CHANGED"
    first.imaging_study["series"][0]["modality"]["code"] = "CHANGED"
    second = map_study(record(**{"00080050": el("SH", "A1")}), CTX)
    assert second.imaging_study["identifier"][1]["type"]["coding"][0]["code"] == "ACSN"
    assert second.imaging_study["series"][0]["modality"]["code"] == "CT"
    assert second.imaging_study["basedOn"][0]["identifier"]["type"]["coding"][0]["code"] == "ACSN"


# --- studies that cannot be represented --------------------------------------------------------


def test_missing_study_uid_is_a_mapping_error():
    rec = record()
    del rec.attrs["0020000D"]
    rec.uid = ""
    with pytest.raises(MappingError, match="StudyInstanceUID"):
        map_study(rec, CTX)


@pytest.mark.parametrize("uid", ["1." + "2" * 70, "1.2.3_4", "1.2 3"])
def test_study_uid_that_is_not_a_fhir_id_is_a_mapping_error(uid):
    with pytest.raises(MappingError, match="FHIR id"):
        map_study(record(uid=uid), CTX)


def test_study_without_usable_series_is_a_mapping_error():
    with pytest.raises(MappingError, match="no series"):
        map_study(StudyRecord(uid=STUDY_UID, attrs=record().attrs, series=[]), CTX)
    no_uid = SeriesRecord(attrs={"00080060": el("CS", "CT")})
    with pytest.raises(MappingError, match="SeriesInstanceUID"):
        map_study(record([no_uid]), CTX)


def test_record_uid_must_match_the_attribute():
    rec = record()
    rec.uid = "1.2.3.999"
    with pytest.raises(MappingError, match="differs"):
        map_study(rec, CTX)


def test_study_uid_from_the_record_when_attributes_lack_it():
    rec = record()
    del rec.attrs["0020000D"]
    assert map_study(rec, CTX).imaging_study["id"] == STUDY_UID


# --- endpoint ------------------------------------------------------------------------------------


def test_endpoint_with_wado_url():
    endpoint = map_endpoint(CTX)
    assert endpoint == {
        "resourceType": "Endpoint",
        "id": "main-pacs",
        "meta": {"profile": ["http://imaging-facade.org/fhir/StructureDefinition/imaging-facade-endpoint"]},
        "extension": [
            {
                "url": "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token",
                "valueBoolean": False,
            }
        ],
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
            "display": "DICOM WADO-RS",
        },
        "name": "main-pacs",
        "payloadType": [{"text": "DICOM WADO-RS"}],
        "payloadMimeType": ["application/dicom"],
        "address": "https://pacs.example/dicom-web",
    }
    Endpoint.model_validate(endpoint)


def test_endpoint_without_image_service_is_off():
    endpoint = map_endpoint(MappingContext("local-folder", "UTC", "urn:x", identity=TEST_IDENTITY))
    assert endpoint["status"] == "off"
    assert endpoint["address"] == "urn:imaging-facade:source:local-folder"
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    Endpoint.model_validate(endpoint)


def test_source_name_must_be_a_fhir_id():
    bad = MappingContext("main pacs", "UTC", "urn:x", identity=TEST_IDENTITY)
    with pytest.raises(MappingError):
        map_endpoint(bad)
    with pytest.raises(MappingError):
        map_study(record(), bad)
