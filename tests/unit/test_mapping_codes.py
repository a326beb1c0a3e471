"""Code tables: coding schemes (PS3.16 section 8), Body Part Examined (PS3.16 Annex L /
CID 4031), laterality and modality codes."""

from __future__ import annotations

import re

import pytest
from pydicom.sr.codedict import codes as sr_codes
from pydicom.sr.coding import snomed_mapping

from app.mapping import codes
from app.mapping.codings import coding_from_item


def el(vr, *values):
    return {"vr": vr, "Value": list(values)}


def normalized(meaning: str) -> str:
    return re.sub(r"[^A-Z0-9]", "", meaning.upper())


ANNEX_L_OVERRIDES = {"HIP"}  # Annex L: HIP is the hip joint (24136001), not CID 4031 "Hip"


def test_every_cid4031_concept_is_found_under_its_meaning_in_capitals():
    cid = sr_codes.cid4031
    for name in cid.dir():
        concept = getattr(cid, name)
        key = normalized(concept.meaning)
        if key in ANNEX_L_OVERRIDES:
            continue
        assert codes.body_part_coding(key) == (
            {"system": codes.SNOMED, "code": concept.value, "display": concept.meaning},
            True,
        )


@pytest.mark.parametrize(
    "term, keyword",
    [
        ("ABDOMENPELVIS", "AbdomenAndPelvis"),
        ("ACJOINT", "AcromioclavicularJoint"),
        ("ANKLE", "AnkleJoint"),
        ("CHESTABDPELVIS", "ChestAbdomenAndPelvis"),
        ("CSPINE", "CervicalSpine"),
        ("TSPINE", "ThoracicSpine"),
        ("LSPINE", "LumbarSpine"),
        ("WHOLEBODY", "EntireBody"),
        ("ELBOW", "ElbowJoint"),
        ("WRIST", "WristJoint"),
        ("TMJ", "TemporomandibularJoint"),
        ("HEADNECK", "HeadAndNeck"),
        ("HIP", "HipJoint"),
        ("SSPINE", "Sacrum"),
        ("IAC", "InternalAuditoryCanal"),
        ("ORBIT", "OrbitalStructure"),
    ],
)
def test_annex_l_spellings(term, keyword):
    concept = getattr(sr_codes.cid4031, keyword)
    assert codes.body_part_coding(term) == (
        {"system": codes.SNOMED, "code": concept.value, "display": concept.meaning},
        True,
    )


@pytest.mark.parametrize(
    "term, code",  # SNOMED CT codes as printed in PS3.16 Annex L
    [
        ("CHEST", "816094009"),
        ("ABDOMEN", "818981001"),
        ("ABDOMENPELVIS", "818982008"),
        ("ANKLE", "70258002"),
        ("WHOLEBODY", "38266002"),
        ("BRAIN", "12738006"),
        ("LIVER", "10200004"),
        ("KIDNEY", "64033007"),
        ("LUNG", "39607008"),
        ("HEAD", "69536005"),
        ("KNEE", "72696002"),
        ("HIP", "24136001"),
    ],
)
def test_body_part_codes_match_annex_l(term, code):
    coding, known = codes.body_part_coding(term)
    assert known and coding["code"] == code and coding["system"] == "http://snomed.info/sct"


@pytest.mark.parametrize("value", ["WHOLE BODY", "whole_body", " Chest "])
def test_body_part_spelling_variants(value):
    assert codes.body_part_coding(value)[1]


def test_unknown_body_part():
    assert codes.body_part_coding("ELBOWPIT") == ({"display": "ELBOWPIT"}, False)


@pytest.mark.parametrize(
    "designator, system",
    [
        ("DCM", "http://dicom.nema.org/resources/ontology/DCM"),
        ("SCT", "http://snomed.info/sct"),
        ("LN", "http://loinc.org"),
        ("UCUM", "http://unitsofmeasure.org"),
        ("SRT", "http://snomed.info/srt"),
        ("RADLEX", "urn:oid:2.16.840.1.113883.6.256"),
        ("2.16.840.1.113883.6.96", "urn:oid:2.16.840.1.113883.6.96"),
        ("99LOCAL", None),
        ("", None),
        (None, None),
    ],
)
def test_coding_scheme_system(designator, system):
    assert codes.coding_scheme_system(designator) == system


def test_snomed_rt_codes_become_snomed_ct_when_pydicom_knows_the_equivalent():
    legacy, current = next(iter(snomed_mapping["SRT"].items()))
    item = {"00080100": el("SH", legacy), "00080102": el("SH", "SRT"), "00080104": el("LO", "x")}
    assert coding_from_item(item, "t", []) == {"system": codes.SNOMED, "code": current, "display": "x"}
    unknown = {"00080100": el("SH", "T-NOPE1"), "00080102": el("SH", "SRT")}
    assert coding_from_item(unknown, "t", []) == {"system": "http://snomed.info/srt", "code": "T-NOPE1"}


def test_long_and_urn_code_values_and_version():
    long_item = {
        "00080119": el("UC", "A-VERY-LONG-CODE-VALUE-OVER-16"),
        "00080102": el("SH", "LN"),
        "00080103": el("SH", "2.73"),
        "00080104": el("LO", "Meaning"),
    }
    assert coding_from_item(long_item, "t", []) == {
        "system": "http://loinc.org",
        "version": "2.73",
        "code": "A-VERY-LONG-CODE-VALUE-OVER-16",
        "display": "Meaning",
    }
    urn_item = {"00080120": el("UR", "urn:uuid:6e1f1e1c-1b4a-4c6e-9d6a-111111111111"), "00080104": el("LO", "Thing")}
    assert coding_from_item(urn_item, "t", []) == {
        "system": "urn:ietf:rfc:3986",
        "code": "urn:uuid:6e1f1e1c-1b4a-4c6e-9d6a-111111111111",
        "display": "Thing",
    }
    assert coding_from_item({"00080104": el("LO", "Only text")}, "t", []) == {"display": "Only text"}
    assert coding_from_item({}, "t", []) is None


def test_local_scheme_keeps_code_without_system_and_notes_it():
    repairs = []
    item = {
        "00080100": el("SH", "X1"),
        "00080102": el("SH", "99ACME"),
        "00080103": el("SH", "1"),
        "00080104": el("LO", "Local"),
    }
    assert coding_from_item(item, "ProcedureCodeSequence", repairs) == {"code": "X1", "display": "Local"}
    assert repairs and "99ACME" in repairs[0]


@pytest.mark.parametrize(
    "value, code", [("R", "419465000"), ("L", "419161000"), ("B", "51440002"), ("U", "66459002"), ("r", "419465000")]
)
def test_laterality_codes(value, code):
    coding = codes.laterality_coding(value)
    assert coding["system"] == "http://snomed.info/sct" and coding["code"] == code


def test_laterality_u_is_dicom_cid244_unilateral():
    assert codes.laterality_coding("U")["code"] == sr_codes.cid244.Unilateral.value
    assert codes.laterality_coding("B")["code"] == sr_codes.cid244.Bilateral.value
    assert codes.laterality_coding("X") is None


def test_modality_codes():
    assert codes.modality_coding("CT") == ({"system": codes.DCM, "code": "CT", "display": "Computed Tomography"}, True)
    assert codes.modality_coding("MR")[0]["display"] == sr_codes.DCM.MagneticResonance.meaning
    assert codes.modality_coding("ZZTOP") == ({"system": codes.DCM, "code": "ZZTOP"}, False)


def test_constant_concepts_are_copied():
    copy = codes.copy_concept(codes.ACCESSION_TYPE)
    copy["coding"][0]["code"] = "X"
    assert codes.ACCESSION_TYPE["coding"][0]["code"] == "ACSN"
