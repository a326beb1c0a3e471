"""Code tables: DICOM coding schemes, modalities, body parts and laterality as FHIR Codings.

Everything here is constant data or a cached lookup built once from pydicom's copy of the
DICOM Content Mapping Resource (PS3.16). pydicom's `sr` package costs about a second to
import, so it is loaded on first use, not when `app.mapping` is imported (the web server
imports mapping modules but never maps).
"""

from __future__ import annotations

import re
from functools import cache

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
RFC3986 = "urn:ietf:rfc:3986"

# PS3.16 section 8, Table 8-1 (Coding Schemes) plus the HL7 symbolic names PS3.16 allows
# (HL7 v2 Table 0396). Where FHIR names a URI for the code system it is used; where it does
# not, the coding scheme's registered OID as `urn:oid:` (FHIR's rule for systems without a
# URI, R4 terminologies-systems).
CODING_SCHEME_SYSTEMS: dict[str, str] = {
    "DCM": DCM,
    "SCT": SNOMED,
    # SNOMED RT legacy ids ("T-D4000"): FHIR reserves this URI for them; codes that have a
    # SNOMED CT equivalent are translated to SCT first (see coding_system_and_code)
    "SRT": "http://snomed.info/srt",
    "SNM3": "urn:oid:2.16.840.1.113883.6.51",
    "LN": "http://loinc.org",
    "UCUM": "http://unitsofmeasure.org",
    "UMLS": "http://www.nlm.nih.gov/research/umls",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "NDC": "http://hl7.org/fhir/sid/ndc",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "I10P": "http://www.cms.gov/Medicare/Coding/ICD10",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "I11": "http://id.who.int/icd/release/11/mms",
    "C4": "http://www.ama-assn.org/go/cpt",
    "C5": "http://www.ama-assn.org/go/cpt",
    "CD2": "http://www.ada.org/cdt",
    "FMA": "http://purl.org/sig/ont/fma",
    "MDC": "urn:iso:std:iso:11073:10101",
    "RADLEX": "urn:oid:2.16.840.1.113883.6.256",
    "NCIt": "urn:oid:2.16.840.1.113883.3.26.1.1",
    "ACR": "urn:oid:2.16.840.1.113883.6.76",
    "HPC": "urn:oid:2.16.840.1.113883.6.14",
    "NEU": "urn:oid:2.16.840.1.113883.6.210",
    "ICDO3": "urn:oid:2.16.840.1.113883.6.43.1",
    "UPC": "urn:oid:2.16.840.1.113883.6.55",
    "ISO3166_1": "urn:iso:std:iso:3166",
    "ISO639_1": "urn:ietf:bcp:47",
    "ISO639_2": "urn:ietf:bcp:47",
    "HL7": "urn:oid:2.16.840.1.113883",
}
# designators are case-sensitive in DICOM; a few archives write them in another case
_SCHEMES_FOLDED = {k.upper(): v for k, v in CODING_SCHEME_SYSTEMS.items()}
#: an ISO object identifier
OID_RE = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


def coding_scheme_system(designator: str | None) -> str | None:
    """FHIR Coding.system for a DICOM Coding Scheme Designator (0008,0102), or None.

    Local schemes ("99..." per PS3.16 section 8) and unknown designators have no URI:
    the caller keeps the code and its meaning and leaves `system` out.
    """
    if not designator:
        return None
    found = CODING_SCHEME_SYSTEMS.get(designator) or _SCHEMES_FOLDED.get(designator.upper())
    if found:
        return found
    if OID_RE.fullmatch(designator):  # some writers put the scheme's OID in the designator
        return "urn:oid:" + designator
    if designator.startswith(("urn:", "http://", "https://")):
        return designator
    return None


@cache
def _srt_to_sct() -> dict:
    from pydicom.sr.coding import snomed_mapping

    return snomed_mapping["SRT"]


def coding_system_and_code(designator: str | None, code: str) -> tuple[str | None, str]:
    """(system, code) for a DICOM code; SNOMED RT codes with an SCT equivalent become SCT."""
    if designator == "SRT":
        sct = _srt_to_sct().get(code)
        if sct:
            return SNOMED, sct
    return coding_scheme_system(designator), code


# --- Modality (0008,0060), (0008,0061): CID 33 "Modality" ---------------------------------


@cache
def _modality_meanings() -> dict[str, str]:
    from pydicom.sr.codedict import codes

    table: dict[str, str] = {}
    for cid in (codes.cid29, codes.cid33):  # acquisition modalities, then all modalities
        for name in cid.dir():
            code = getattr(cid, name)
            table.setdefault(code.value, code.meaning)
    return table


def modality_coding(value: str) -> tuple[dict, bool]:
    """(Coding in the DCM system, whether the value is a DICOM defined term).

    Unknown modalities are kept as they are (archives use vendor terms, and retired terms
    such as "CD" or "DD" are real): the Coding simply has no display.
    """
    meaning = _modality_meanings().get(value)
    if meaning is None:
        return {"system": DCM, "code": value}, False
    return {"system": DCM, "code": value, "display": meaning}, True


# --- Body Part Examined (0018,0015) -> SNOMED CT, PS3.16 Annex L / CID 4031 ---------------
# The table is data of the mapping profile (fhir_profiles/mapping/base.yaml, `body_part`),
# which vendor and source layers extend or override.


def body_part_coding(value: str, table: dict | None = None) -> tuple[dict, bool]:
    """(Coding, known) for a Body Part Examined value, looked up in `table` (a profile's
    `body_parts`; the base profile's when None).

    Known terms give a SNOMED CT Coding; an unknown value is kept as {"display": value}
    (R4 series.bodySite is a single Coding, so there is no CodeableConcept.text to use).
    """
    from app.mapping.profile import base_profile, body_part_key

    table = base_profile().body_parts if table is None else table
    found = table.get(body_part_key(value))
    if found is None:
        return {"display": value}, False
    return {"system": SNOMED, "code": found[0], "display": found[1]}, True


# --- Laterality (0020,0060) ----------------------------------------------------------------

# R/L/B: the FHIR R4 example value set for series.laterality (ValueSet/bodysite-laterality);
# U (Image Laterality "unpaired") has no code there: SNOMED CT "Unilateral" (DICOM CID 244).
LATERALITY = {
    "R": {"system": SNOMED, "code": "419465000", "display": "Unilateral right"},
    "L": {"system": SNOMED, "code": "419161000", "display": "Unilateral left"},
    "B": {"system": SNOMED, "code": "51440002", "display": "Bilateral"},
    "U": {"system": SNOMED, "code": "66459002", "display": "Unilateral"},
}


def laterality_coding(value: str) -> dict | None:
    found = LATERALITY.get(value.strip().upper())
    return dict(found) if found else None


ACCESSION_TYPE = {"coding": [{"system": V2_0203, "code": "ACSN", "display": "Accession ID"}]}
PERFORMER_FUNCTION = {"coding": [{"system": PARTICIPATION_TYPE, "code": "PRF", "display": "performer"}]}


def copy_concept(concept: dict) -> dict:
    """A fresh copy of one of the constant CodeableConcepts above (output dicts are never
    shared between resources, so a caller may change one without touching another)."""
    return {"coding": [dict(coding) for coding in concept["coding"]]}
