"""DICOM Patient module (PS3.3 C.7.1.1) -> FHIR R4 Patient.

Identifiers follow HL7's v2-to-FHIR rules for CX/HD: the issuer decides Identifier.system,
and the Patient's id is a digest of (system, value) of the identifier from Patient ID
(0010,0020) (see app.identity.keys). Repair notes written here never contain the patient's
name, identifiers or birth date.
"""

from __future__ import annotations

from urllib.parse import quote

from app.identity.keys import decide_patient_id
from app.mapping import claims, codes, tags
from app.mapping.codings import universal_entity_system
from app.mapping.context import MappingContext
from app.mapping.values import clean_text, fhir_code
from app.mapping.vr import first, items, parse_da_with, pn_components, pn_groups, raw_values

#: Identifier.system of a local issuer that has no configured URI
LOCAL_ISSUER_PREFIX = "urn:imaging-facade:issuer:"
EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"

_GENDER = {"M": "male", "F": "female", "O": "other"}


def issuer_system_and_rule(
    attrs: dict, ctx: MappingContext, label: str, repairs: list
) -> tuple[str, str | None, str | None, str | None]:
    """(Identifier.system, local issuer for assigner.display, identifier type code, the profile
    rule (file:line) that gave the system if one did).

    Order: a usable Universal Entity ID in the Issuer of Patient ID Qualifiers Sequence;
    then the bare Issuer of Patient ID (0010,0021) through ctx.issuer_systems and the
    profile's `issuers`, or, when not configured,
    `urn:imaging-facade:issuer:<percent-encoded issuer>`; with no issuer at all,
    ctx.patient_id_system.
    """
    local = first(attrs, tags.ISSUER_OF_PATIENT_ID)
    qualifiers = items(attrs, tags.ISSUER_QUALIFIERS)
    qualifier = qualifiers[0] if qualifiers else {}
    type_code = fhir_code(first(qualifier, tags.IDENTIFIER_TYPE_CODE))
    system = universal_entity_system(
        first(qualifier, tags.UNIVERSAL_ENTITY_ID), first(qualifier, tags.UNIVERSAL_ENTITY_ID_TYPE), label, repairs
    )
    if system:
        return system, local, type_code, None
    if local:
        mapped, rule = ctx.issuer(local)
        if mapped:
            return mapped, local, type_code, rule
        return LOCAL_ISSUER_PREFIX + quote(local, safe=""), local, type_code, None
    configured = ctx.rules.patient_id_system is not None and ctx.rules.patient_id_system == ctx.patient_id_system
    return ctx.patient_id_system, None, type_code, ctx.rules.rule("patient_id", "system") if configured else None


def patient_identifier(
    attrs: dict, ctx: MappingContext, label: str, repairs: list, at: str | None = None
) -> dict | None:
    """Identifier from the Patient ID (0010,0020) of `attrs` and its issuer, or None;
    `at` is the element path provenance is recorded under."""
    value = clean_text(first(attrs, tags.PATIENT_ID), label, repairs)
    if not value:
        return None
    system, local, type_code, rule = issuer_system_and_rule(attrs, ctx, label, repairs)
    if at:
        ctx.trace(at, [tags.PATIENT_ID, tags.ISSUER_OF_PATIENT_ID, tags.ISSUER_QUALIFIERS])
        ctx.trace(
            at + ".system",
            [tags.ISSUER_OF_PATIENT_ID, tags.ISSUER_QUALIFIERS],
            rule,
            None if local or rule else "no issuer: the source's Patient ID system",
        )
    identifier: dict = {}
    if type_code:
        identifier["type"] = {"coding": [{"system": codes.V2_0203, "code": type_code}]}
    identifier["system"] = system
    identifier["value"] = value
    if local:
        identifier["assigner"] = {"display": local}
    return identifier


def _components(group: str, name_format: str) -> list[str]:
    """PN components of a group; a group without "^" is read as the profile's `names.format`
    says ("JOHN SMITH" given-family, "SMITH JOHN" or "SMITH, JOHN" family-given)."""
    if name_format == "dicom" or "^" in group:
        return pn_components(group)
    if name_format == "family-given" and "," in group:
        family, _, given = group.partition(",")
        words = given.split()
        return [family.strip(), words[0] if words else "", " ".join(words[1:]), "", ""]
    words = group.split()
    if len(words) < 2:
        return pn_components(group)
    if name_format == "given-family":
        return [words[-1], words[0], " ".join(words[1:-1]), "", ""]
    return [words[0], words[1], " ".join(words[2:]), "", ""]


def human_names(value: object, repairs: list | None = None, name_format: str = "dicom") -> list[dict]:
    """HumanNames of one PN value: one per non-empty component group; the ideographic and
    phonetic groups carry the iso21090-EN-representation extension (IDE / SYL)."""
    names: list[dict] = []
    group: str | None
    for group, representation in zip(pn_groups(value), (None, "IDE", "SYL"), strict=True):
        group = clean_text(group, "PatientName", repairs)
        if not group:
            continue
        family, given, middle, prefix, suffix = _components(group, name_format)
        name: dict = {}
        if representation:
            name["extension"] = [{"url": EN_REPRESENTATION, "valueCode": representation}]
        if family:
            name["family"] = family
        givens = [g for g in (given, middle) if g]
        if givens:
            name["given"] = givens
        if prefix:
            name["prefix"] = [prefix]
        if suffix:
            name["suffix"] = [suffix]
        if len(name) > (1 if representation else 0):
            names.append(name)
    return names


def map_patient(attrs: dict, study_uid: str, ctx: MappingContext, repairs: list) -> dict:
    """FHIR Patient for the patient-level attributes of one study."""
    resource_id, identifiers = _id_and_identifiers(attrs, study_uid, ctx, repairs)
    patient: dict = {"resourceType": "Patient", "id": resource_id, "meta": claims.meta("Patient")}
    ctx.trace("Patient.meta.profile", (), None, "the profile every Patient claims (fhir_profiles/structure)")
    if identifiers:
        patient["identifier"] = identifiers
    _add_name(patient, attrs, ctx, repairs)
    _add_gender(patient, attrs, ctx, repairs)
    _add_birth_date(patient, attrs, ctx, repairs)
    return patient


def _id_and_identifiers(attrs: dict, study_uid: str, ctx: MappingContext, repairs: list) -> tuple[str, list[dict]]:
    """(Patient.id, Patient.identifier): the id is a digest of the first identifier, so every
    study with the same Patient ID and issuer refers to the same Patient."""
    primary = patient_identifier(attrs, ctx, "PatientID", repairs, "Patient.identifier[0]")
    if primary is None:
        # no Patient ID: a patient of its own, never merged with anybody
        resource_id = decide_patient_id(None, study_uid, ctx.identity)
        repairs.append("PatientID is empty; the study gets a Patient of its own")
        ctx.trace("Patient.id", [tags.STUDY_UID], None, "no Patient ID: a Patient of the study's own")
        return resource_id, []
    identifiers = [primary]
    resource_id = decide_patient_id((primary["system"], primary["value"]), study_uid, ctx.identity)
    # Other Patient IDs Sequence: more (id, issuer) pairs for the same person
    seen = {(primary["system"], primary["value"])}
    for item in items(attrs, tags.OTHER_PATIENT_IDS):
        other = patient_identifier(item, ctx, "OtherPatientIDsSequence", repairs)
        if other is None or (other["system"], other["value"]) in seen:
            continue
        seen.add((other["system"], other["value"]))
        ctx.trace(f"Patient.identifier[{len(identifiers)}]", [tags.OTHER_PATIENT_IDS])
        identifiers.append(other)
    namespace = ctx.identity.namespace(primary["system"])
    ctx.trace(
        "Patient.id",
        [tags.PATIENT_ID, tags.ISSUER_OF_PATIENT_ID, tags.ISSUER_QUALIFIERS],
        None,
        "a digest of the first identifier's system and value"
        if namespace == primary["system"]
        else "a digest of the first identifier's value in its namespace (identity.same_namespace)",
    )
    return resource_id, identifiers


def _add_name(patient: dict, attrs: dict, ctx: MappingContext, repairs: list) -> None:
    """Patient.name from the first PatientName value, its groups split as the profile's
    `names.format` says where they have no component separators."""
    names_values = raw_values(attrs, tags.PATIENT_NAME)
    if not names_values:
        return
    rules = ctx.rules
    groups = [g for g in pn_groups(names_values[0]) if g]
    reformatted = rules.name_format != "dicom" and any(" " in g.strip() and "^" not in g for g in groups)
    names = human_names(names_values[0], repairs, rules.name_format)
    if names:
        patient["name"] = names
        if reformatted:
            repairs.append(
                f"PatientName has no component separators (^); read as "
                f"{rules.name_format} (mapping profile names.format)"
            )
        ctx.trace("Patient.name", [tags.PATIENT_NAME], rules.rule("names", "format") if reformatted else None)


def _add_gender(patient: dict, attrs: dict, ctx: MappingContext, repairs: list) -> None:
    """Patient.gender, which the profile requires: "unknown" where Patient's Sex does not say."""
    sex = first(attrs, tags.SEX)
    patient["gender"] = _GENDER.get(sex.upper(), "unknown") if sex else "unknown"
    ctx.trace("Patient.gender", [tags.SEX], None, None if sex else "no Patient's Sex: unknown")
    if sex and sex.upper() not in _GENDER:
        repairs.append(f"PatientSex {sex!r} is not M, F or O; gender set to unknown")


def _add_birth_date(patient: dict, attrs: dict, ctx: MappingContext, repairs: list) -> None:
    """Patient.birthDate, unless it is no date or after the study's date."""
    birth = first(attrs, tags.BIRTH_DATE)
    if not birth:
        return
    birth_date, pattern = parse_da_with(birth, ctx.rules.date_formats)
    study_date, _ = parse_da_with(first(attrs, tags.STUDY_DATE), ctx.rules.date_formats)
    if pattern is not None:
        repairs.append("PatientBirthDate is not a valid DA; read with the mapping profile's dates.formats")
    if birth_date is None:
        repairs.append("PatientBirthDate is not a valid DA; birthDate left out")
    elif study_date is not None and birth_date > study_date:
        # mapping has no clock: the study's own date is the latest the birth can be
        repairs.append("PatientBirthDate is after the StudyDate; birthDate left out")
    else:
        patient["birthDate"] = birth_date.isoformat()
        ctx.trace("Patient.birthDate", [tags.BIRTH_DATE], ctx.rules.rule("dates", "formats") if pattern else None)
