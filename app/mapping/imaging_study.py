"""StudyRecord (DICOM JSON) -> FHIR R4 ImagingStudy + Patient (BRIEF §2, R4 ImagingStudy
mappings to DICOM).

Pure: the output depends only on the record and the context, and is the same dict (same key
order, same list order) whatever order the archive answered in: series are sorted by Series
Number then UID, instances by Instance Number then UID.

What is broken is repaired or left out and said in `MappedStudy.repairs`; only a study that
cannot be represented at all raises MappingError. Repair notes name attributes and, for
dates, codes and counts, the offending value; never patient names or identifiers. The
ImagingStudy carries them, with the source's own notes (`StudyRecord.repairs`), as
`note` annotations: whoever reads the study sees what the facade changed or left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from app.identity.keys import patient_key
from app.ids import valid_id
from app.mapping import claims, codes, private, tags
from app.mapping.context import MappingContext
from app.mapping.codings import codeable_concepts, universal_entity_system
from app.mapping.datetimes import fhir_datetime
from app.mapping.errors import MappingError
from app.mapping.shape import checked
from app.mapping.values import clean_text, fhir_code
from app.mapping.vr import all_text, first, items, name_displays, raw_values, text, unsigned, valid_uid
from app.mapping.patient import map_patient
from app.mapping.profile import body_part_key, institution_key

DICOM_UID_SYSTEM = "urn:dicom:uid"
#: most repair notes written into one ImagingStudy
MAX_NOTES = 100
#: longest repair note kept (a note may quote a value)
MAX_NOTE = 500
NOTE_AUTHOR = "imaging-facade"


@dataclass
class MappedStudy:
    """The FHIR resources of one study (plain dicts, no `meta`) and the repair notes."""

    imaging_study: dict
    patient: dict
    repairs: list[str] = field(default_factory=list)

    @property
    def patient_key(self) -> tuple[str, str] | None:
        """(system, value) the Patient is keyed by; None for a per-study Patient."""
        return patient_key(self.patient)


def _study_uid(record, attrs: dict) -> str:
    from_attrs = first(attrs, tags.STUDY_UID)
    from_record = (record.uid or "").strip() or None
    if from_attrs and from_record and from_attrs != from_record:
        raise MappingError("StudyInstanceUID of the attributes differs from the record's uid")
    uid = from_attrs or from_record
    if not uid:
        raise MappingError("no StudyInstanceUID")
    if not valid_id(uid):
        raise MappingError("StudyInstanceUID is not a valid FHIR id ([A-Za-z0-9-.]{1,64})")
    return uid


@cache
def _sop_class_name(uid: str) -> str | None:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else None


def _sop_class(uid: str) -> dict:
    coding = {"system": codes.RFC3986, "code": "urn:oid:" + uid}
    name = _sop_class_name(uid) if valid_uid(uid) else None
    if name:
        coding["display"] = name
    return coding


def _instance_title(inst: dict, repairs: list) -> str | None:
    label = first(inst, tags.CONTENT_LABEL)
    if label is None:
        names = items(inst, tags.CONCEPT_NAME)
        if names:
            label = first(names[0], tags.CODE_MEANING)
        if label is None:
            label = first(inst, tags.DOCUMENT_TITLE)
            if label is None:
                kinds = raw_values(inst, tags.IMAGE_TYPE)
                if kinds:
                    label = "\\".join(k.strip() if isinstance(k, str) else str(k)
                                      for k in kinds if k is not None).strip("\\ ") or None
    return clean_text(label, "instance title", repairs) if label else None


def _map_instances(instances: list[dict], series_uid: str, repairs: list) -> list[dict]:
    rows = []
    missing_uid = bad_uid = no_class = duplicates = 0
    seen: set[str] = set()
    bad_numbers: list[str] = []  # one note per series, not one per instance
    not_dicom_uid = 0
    for inst in instances:
        uid = first(inst, tags.SOP_INSTANCE_UID)
        if uid is None:
            missing_uid += 1
            continue
        if not valid_id(uid):
            bad_uid += 1
            continue
        sop_class = fhir_code(first(inst, tags.SOP_CLASS_UID))
        if sop_class is None:
            no_class += 1
            continue
        if not valid_uid(uid):
            not_dicom_uid += 1
        number = unsigned(inst, tags.INSTANCE_NUMBER, "InstanceNumber", bad_numbers)
        rows.append((number is None, number or 0, uid, sop_class, inst))
    rows.sort(key=lambda row: row[:3])
    out = []
    for no_number, number, uid, sop_class, inst in rows:
        if uid in seen:
            duplicates += 1
            continue
        seen.add(uid)
        entry = {"uid": uid, "sopClass": _sop_class(sop_class)}
        if not no_number:
            entry["number"] = number
        title = _instance_title(inst, repairs)
        if title:
            entry["title"] = title
        out.append(entry)
    where = f"series {series_uid}"
    if missing_uid:
        repairs.append(f"{where}: {missing_uid} instance(s) without SOPInstanceUID left out")
    if bad_uid:
        repairs.append(f"{where}: {bad_uid} instance(s) whose SOPInstanceUID is not a valid "
                       "FHIR id left out")
    if no_class:
        repairs.append(f"{where}: {no_class} instance(s) without SOPClassUID left out")
    if not_dicom_uid:
        repairs.append(f"{where}: {not_dicom_uid} instance(s) whose SOPInstanceUID is not a "
                       "valid DICOM UID; kept as the archive gave it")
    if duplicates:
        repairs.append(f"{where}: {duplicates} duplicate instance(s) left out")
    if bad_numbers:
        repairs.append(f"{where}: {len(bad_numbers)} instance(s) with an InstanceNumber that "
                       "is not a valid unsigned integer; number left out")
    return out


def _modality(value: str | None, label: str, noted: set, repairs: list,
              ctx: MappingContext) -> tuple[dict | None, str | None]:
    """(Coding, the profile rule that normalized it) of a Modality value.

    A synonym of the profile (`modality.synonyms`, e.g. PET -> PT) gives its DICOM code; a
    value that is neither a DICOM modality (CID 29 / CID 33) nor a synonym is no code of
    any system: it is kept as text (Coding.display) and noted.
    """
    code = fhir_code(value.upper()) if value else None
    if code is None:
        return None, None
    rules = ctx.rules
    rule = None
    if code in rules.modality_synonyms:
        rule = rules.rule("modality", "synonym", code)
        code = rules.modality_synonyms[code]
    coding, known = codes.modality_coding(code)
    if not known:
        if code not in noted:
            noted.add(code)
            repairs.append(f"{label} {code!r} is not a DICOM modality (CID 29 or 33) nor a "
                           "synonym of the mapping profile; kept as text")
        coding = {"display": code}
    return coding, rule


def _series_laterality(attrs: dict, instances: list[dict], where: str,
                       repairs: list) -> dict | None:
    value = first(attrs, tags.LATERALITY)
    if value is not None:
        coding = codes.laterality_coding(value)
        if coding is None:
            repairs.append(f"{where}: Laterality {value!r} is not R, L, B or U; left out")
        return coding
    # no series Laterality: the Image Laterality its instances agree on, if any
    found = {v.upper() for v in (first(inst, tags.IMAGE_LATERALITY) for inst in instances) if v}
    if len(found) == 1:
        return codes.laterality_coding(found.pop())
    return None


def _performers(attrs: dict) -> list[dict]:
    out = []
    physicians = name_displays(attrs, tags.PERFORMING)
    for name in physicians:
        out.append({"function": codes.copy_concept(codes.PERFORMER_FUNCTION),
                    "actor": {"display": name}})
    for name in name_displays(attrs, tags.OPERATORS):
        if name not in physicians:
            out.append({"actor": {"display": name}})
    return out


def _body_site(value: str, where: str, ctx: MappingContext,
               repairs: list) -> tuple[dict, str | None]:
    """(series.bodySite Coding, rule) for a Body Part Examined term (profile `body_part`)."""
    rules = ctx.rules
    coding, known = codes.body_part_coding(value, rules.body_parts)
    if not known:
        repairs.append(f"{where}: BodyPartExamined {value!r} is not a PS3.16 Annex L term "
                       "nor a term of the mapping profile; kept as display only")
        return coding, None
    key = body_part_key(value)
    return coding, rules.rule("body_part", "term", key) or rules.rule("body_part", "cid4031_meanings")


def _map_series(attrs: dict, instances: list[dict], uid: str, number: int | None,
                offset: str | None, ctx: MappingContext, noted: set,
                repairs: list, index: int = 0) -> dict:
    where = f"series {uid}"
    at = f"ImagingStudy.series[{index}]"
    instances = [checked(inst, repairs) for inst in instances]
    series: dict = {"uid": uid}
    ctx.trace(at + ".uid", [tags.SERIES_UID])
    if number is not None:
        series["number"] = number
        ctx.trace(at + ".number", [tags.SERIES_NUMBER])
    modality, rule = _modality(first(attrs, tags.MODALITY), "Modality", noted, repairs, ctx)
    if modality is None:  # R4 requires series.modality: DICOM's "Other"
        modality = {"system": codes.DCM, "code": "OT", "display": "Other"}
        repairs.append(f"{where}: Modality missing; series modality set to OT")
        ctx.trace(at + ".modality", [tags.MODALITY], None, "Modality missing: OT (Other)")
    else:
        ctx.trace(at + ".modality", [tags.MODALITY], rule)
    series["modality"] = modality
    description = text(attrs, tags.SERIES_DESCRIPTION, "SeriesDescription", repairs)
    if description:
        series["description"] = description
        ctx.trace(at + ".description", [tags.SERIES_DESCRIPTION])
    mapped_instances = _map_instances(instances, uid, repairs)
    count = unsigned(attrs, tags.SERIES_INSTANCE_COUNT, "NumberOfSeriesRelatedInstances", repairs)
    series["numberOfInstances"] = count if count is not None else len(mapped_instances)
    ctx.trace(at + ".numberOfInstances", [tags.SERIES_INSTANCE_COUNT] if count is not None else
              [tags.SOP_INSTANCE_UID], None, None if count is not None else "instances counted")
    body_part = first(attrs, tags.BODY_PART)
    if body_part:
        body_part = clean_text(body_part, "BodyPartExamined", repairs)
        series["bodySite"], rule = _body_site(body_part, where, ctx, repairs)
        ctx.trace(at + ".bodySite", [tags.BODY_PART], rule)
    laterality = _series_laterality(attrs, instances, where, repairs)
    if laterality:
        series["laterality"] = laterality
        ctx.trace(at + ".laterality", [tags.LATERALITY] if first(attrs, tags.LATERALITY) else [tags.IMAGE_LATERALITY])
    started = fhir_datetime(first(attrs, tags.SERIES_DATE), first(attrs, tags.SERIES_TIME),
                            first(attrs, tags.TZ_OFFSET) or offset, ctx.timezone,
                            ("SeriesDate", "SeriesTime"), f"{where} started", repairs,
                            ctx.rules.date_formats)
    if started:
        series["started"] = started
        ctx.trace(at + ".started", [tags.SERIES_DATE, tags.SERIES_TIME, tags.TZ_OFFSET])
    performers = _performers(attrs)
    if performers:
        series["performer"] = performers
        ctx.trace(at + ".performer", [tags.PERFORMING, tags.OPERATORS])
    if mapped_instances:
        series["instance"] = mapped_instances
        if ctx.recorder is not None:
            _trace_instances(mapped_instances, at, ctx)
    _apply_private(series, "series", attrs, at, ctx, repairs, where)
    return series


def _trace_instances(instances: list[dict], at: str, ctx: MappingContext) -> None:
    ctx.trace(at + ".instance", [tags.SOP_INSTANCE_UID])
    for i, entry in enumerate(instances):
        ctx.trace(f"{at}.instance[{i}].uid", [tags.SOP_INSTANCE_UID])
        ctx.trace(f"{at}.instance[{i}].sopClass", [tags.SOP_CLASS_UID])
        ctx.trace(f"{at}.instance[{i}].number", [tags.INSTANCE_NUMBER])
        if "title" in entry:
            ctx.trace(f"{at}.instance[{i}].title",
                      [tags.CONTENT_LABEL, tags.CONCEPT_NAME, tags.DOCUMENT_TITLE, tags.IMAGE_TYPE], None,
                      "Content Label, else Concept Name, Document Title or Image Type")


def _apply_private(resource: dict, level: str, attrs: dict, at: str, ctx: MappingContext,
                   repairs: list, where: str) -> None:
    """Write the private attributes the profile maps at `level` ("study" or "series") where
    each rule says: extensions (one per value) or one FHIR element (the first value)."""
    for rule in ctx.rules.private_tags:
        if rule.level != level:
            continue
        values, tags_read = private.read(attrs, rule)
        if not values:
            continue
        if rule.extension:
            extensions = resource.setdefault("extension", [])
            for value in values:
                ctx.trace(f"{at}.extension[{len(extensions)}]", tags_read, rule.rule)
                extensions.append({"url": rule.extension, "valueString": value})
            continue
        element = rule.target.rsplit(".", 1)[1]
        if element == "bodySite":
            resource["bodySite"], _ = _body_site(values[0], where, ctx, repairs)
        elif element == "location":
            resource["location"] = {"display": values[0]}
        else:
            resource[element] = values[0]
        ctx.trace(f"{at}.{element}", tags_read, rule.rule)


def _map_series_list(record, offset: str | None, ctx: MappingContext,
                     noted: set, repairs: list) -> list[dict]:
    rows = []
    missing = invalid = 0
    for series_record in record.series:
        attrs = checked(series_record.attrs, repairs)
        uid = first(attrs, tags.SERIES_UID)
        if uid is None:
            missing += 1
            continue
        if not valid_id(uid):
            invalid += 1
            continue
        if not valid_uid(uid):
            repairs.append(f"series {uid}: SeriesInstanceUID is not a valid DICOM UID; "
                           "kept as the archive gave it")
        number = unsigned(attrs, tags.SERIES_NUMBER, f"series {uid}: SeriesNumber", repairs)
        rows.append((number is None, number or 0, uid, attrs, series_record))
    if missing:
        repairs.append(f"{missing} series without SeriesInstanceUID left out")
    if invalid:
        repairs.append(f"{invalid} series whose SeriesInstanceUID is not a valid FHIR id "
                       "left out")
    rows.sort(key=lambda row: row[:3])
    merged: dict[str, tuple[int | None, dict, list]] = {}
    for no_number, number, uid, attrs, series_record in rows:
        if uid in merged:  # the archive answered a series twice: one series, all instances
            merged[uid][2].extend(series_record.instances)
            repairs.append(f"series {uid} listed more than once; merged")
            continue
        merged[uid] = (None if no_number else number, attrs, list(series_record.instances))
    return [
        _map_series(attrs, instances, uid, number, offset, ctx, noted, repairs, index)
        for index, (uid, (number, attrs, instances)) in enumerate(merged.items())
    ]


def _accession(attrs: dict, ctx: MappingContext, repairs: list) -> tuple[dict | None, str | None]:
    """Accession identifier: value (0008,0050) (or of the first Request Attributes item that
    has one) and system from its Issuer of Accession Number Sequence (0008,0051)."""
    source = attrs
    value = first(attrs, tags.ACCESSION)
    if value is None:
        for item in items(attrs, tags.REQUEST_ATTRIBUTES):
            value = first(item, tags.ACCESSION)
            if value is not None:
                source = item
                break
    value = clean_text(value, "AccessionNumber", repairs)
    if value is None:
        return None, None
    issuers = items(source, tags.ACCESSION_ISSUER) or (items(attrs, tags.ACCESSION_ISSUER)
                                                   if source is not attrs else [])
    issuer = issuers[0] if issuers else {}
    local = first(issuer, tags.LOCAL_NAMESPACE_ENTITY_ID)
    system = universal_entity_system(first(issuer, tags.UNIVERSAL_ENTITY_ID),
                                     first(issuer, tags.UNIVERSAL_ENTITY_ID_TYPE),
                                     "IssuerOfAccessionNumberSequence", repairs)
    rule = None
    if system is None and local:
        system, rule = ctx.issuer(local)
        if system is None:
            repairs.append(f"Issuer of Accession Number {local!r} is not configured in "
                           "issuer_systems nor in the mapping profile's issuers")
    if system is None:
        system, rule = ctx.accession_default()
    identifier: dict = {"type": codes.copy_concept(codes.ACCESSION_TYPE)}
    if system:
        identifier["system"] = system
    identifier["value"] = value
    if local:
        identifier["assigner"] = {"display": local}
    return identifier, rule


def _reasons(attrs: dict, repairs: list) -> list[dict]:
    def from_level(level: dict) -> list[dict]:
        found = codeable_concepts(level, tags.REASON_CODES, "ReasonForRequestedProcedureCode",
                                  repairs)
        reason = text(level, tags.REASON_TEXT, "ReasonForTheRequestedProcedure", repairs)
        if reason and not any(c.get("text") == reason for c in found):
            found.append({"text": reason})
        return found

    reasons = from_level(attrs)
    if not reasons:
        for item in items(attrs, tags.REQUEST_ATTRIBUTES):
            for concept in from_level(item):
                if concept not in reasons:
                    reasons.append(concept)
    return reasons


def map_study(record, ctx: MappingContext) -> MappedStudy:
    """Map one StudyRecord to FHIR R4 ImagingStudy and Patient dicts (see module doc)."""
    repairs: list[str] = []
    attrs = checked(record.attrs, repairs)
    uid = _study_uid(record, attrs)
    if not valid_id(ctx.source):
        raise MappingError(f"source name {ctx.source!r} is not a valid FHIR id")
    if not record.series:
        raise MappingError("the study has no series")
    if not valid_uid(uid):
        repairs.append("StudyInstanceUID is not a valid DICOM UID (digits and dots, no "
                       "leading zeros); kept as the archive gave it")
    noted: set = set()

    patient = map_patient(attrs, uid, ctx, repairs)
    offset = first(attrs, tags.TZ_OFFSET)
    series = _map_series_list(record, offset, ctx, noted, repairs)
    if not series:
        raise MappingError("none of the study's series has a usable SeriesInstanceUID")

    trace = ctx.trace
    study: dict = {"resourceType": "ImagingStudy", "id": uid, "meta": claims.meta("ImagingStudy")}
    trace("ImagingStudy.id", [tags.STUDY_UID])
    trace("ImagingStudy.meta.profile", (), None, "the profile every ImagingStudy claims "
          "(fhir_profiles/structure)")
    identifiers = [{"system": DICOM_UID_SYSTEM, "value": "urn:oid:" + uid}]
    trace("ImagingStudy.identifier[0]", [tags.STUDY_UID])
    accession, rule = _accession(attrs, ctx, repairs)
    if accession:
        identifiers.append(accession)
        trace("ImagingStudy.identifier[1]", [tags.ACCESSION, tags.ACCESSION_ISSUER])
        trace("ImagingStudy.identifier[1].system", [tags.ACCESSION_ISSUER], rule)
    study["identifier"] = identifiers
    study["status"] = "available"
    trace("ImagingStudy.status", (), None, "the study is held by the archive")

    modalities = []
    listed = all_text(attrs, tags.MODALITIES_IN_STUDY)
    if listed:
        for value in listed:
            coding, rule = _modality(value, "ModalitiesInStudy", noted, repairs, ctx)
            if coding and coding not in modalities:
                trace(f"ImagingStudy.modality[{len(modalities)}]", [tags.MODALITIES_IN_STUDY], rule)
                modalities.append(coding)
    else:
        for index, entry in enumerate(series):
            if entry["modality"] not in modalities:
                found = ctx.recorder.explain(f"ImagingStudy.series[{index}].modality") if ctx.recorder else None
                trace(f"ImagingStudy.modality[{len(modalities)}]", [tags.MODALITY],
                      found[1].rule if found else None, "the distinct series modalities")
                modalities.append(dict(entry["modality"]))
    if modalities:
        study["modality"] = modalities
    study["subject"] = {"reference": "Patient/" + patient["id"]}
    trace("ImagingStudy.subject", [tags.PATIENT_ID, tags.ISSUER_OF_PATIENT_ID, tags.ISSUER_QUALIFIERS], None,
          "the Patient keyed by (issuer system, Patient ID)")

    started = fhir_datetime(first(attrs, tags.STUDY_DATE), first(attrs, tags.STUDY_TIME), offset,
                            ctx.timezone, ("StudyDate", "StudyTime"), "started", repairs,
                            ctx.rules.date_formats)
    if started:
        study["started"] = started
        trace("ImagingStudy.started", [tags.STUDY_DATE, tags.STUDY_TIME, tags.TZ_OFFSET], None,
              None if offset else f"local time in the source's zone {ctx.timezone}")
    if accession:
        based_on = dict(accession, type=codes.copy_concept(codes.ACCESSION_TYPE))
        if "assigner" in based_on:
            based_on["assigner"] = dict(based_on["assigner"])
        study["basedOn"] = [{"type": "ServiceRequest", "identifier": based_on}]
        trace("ImagingStudy.basedOn", [tags.ACCESSION, tags.ACCESSION_ISSUER])
    referrers = name_displays(attrs, tags.REFERRING)
    if referrers:
        study["referrer"] = {"display": referrers[0]}
        trace("ImagingStudy.referrer", [tags.REFERRING])
    readers = name_displays(attrs, tags.READING)
    if readers:
        study["interpreter"] = [{"display": name} for name in readers]
        trace("ImagingStudy.interpreter", [tags.READING])
    study["endpoint"] = [{"reference": "Endpoint/" + ctx.source}]
    trace("ImagingStudy.endpoint", (), None, f"the Endpoint of source {ctx.source}")

    series_count = unsigned(attrs, tags.STUDY_SERIES_COUNT, "NumberOfStudyRelatedSeries", repairs)
    study["numberOfSeries"] = series_count if series_count is not None else len(series)
    trace("ImagingStudy.numberOfSeries", [tags.STUDY_SERIES_COUNT] if series_count is not None
          else [tags.SERIES_UID], None, None if series_count is not None else "series counted")
    instance_count = unsigned(attrs, tags.STUDY_INSTANCE_COUNT, "NumberOfStudyRelatedInstances",
                              repairs)
    study["numberOfInstances"] = (instance_count if instance_count is not None
                                  else sum(s["numberOfInstances"] for s in series))
    trace("ImagingStudy.numberOfInstances", [tags.STUDY_INSTANCE_COUNT] if instance_count is not None
          else [tags.SOP_INSTANCE_UID], None, None if instance_count is not None else "instances counted")
    procedures = codeable_concepts(attrs, tags.PROCEDURE_CODES, "ProcedureCodeSequence", repairs)
    if procedures:
        study["procedureCode"] = procedures
        trace("ImagingStudy.procedureCode", [tags.PROCEDURE_CODES])
    location, rule = _location(attrs, ctx, repairs)
    if location:
        study["location"] = location
        trace("ImagingStudy.location", [tags.INSTITUTION] if first(attrs, tags.INSTITUTION) else (), rule)
    reasons = _reasons(attrs, repairs)
    if reasons:
        study["reasonCode"] = reasons
        trace("ImagingStudy.reasonCode", [tags.REASON_CODES, tags.REASON_TEXT, tags.REQUEST_ATTRIBUTES])
    description = text(attrs, tags.STUDY_DESCRIPTION, "StudyDescription", repairs)
    if description:
        study["description"] = description
        trace("ImagingStudy.description", [tags.STUDY_DESCRIPTION])
    _apply_private(study, "study", attrs, "ImagingStudy", ctx, repairs, "study")
    description = study.pop("description", None)  # R4 order: note, then description
    repairs = [_note_text(note) for note in dict.fromkeys(repairs)]
    notes = _notes([*(record.repairs or []), *repairs])
    if notes:
        study["note"] = notes
        trace("ImagingStudy.note", (), None, "what was repaired or left out to read the study")
    if description:
        study["description"] = description
    study["series"] = series
    if "extension" in study:  # R4 element order: extensions right after meta
        study = {"resourceType": study.pop("resourceType"), "id": study.pop("id"),
                 "meta": study.pop("meta"), "extension": study.pop("extension"), **study}
    return MappedStudy(imaging_study=study, patient=patient, repairs=repairs)


def _location(attrs: dict, ctx: MappingContext, repairs: list) -> tuple[dict | None, str | None]:
    """ImagingStudy.location from Institution Name (0008,0080), named as the profile's
    `institution` says: a variant of `names` becomes its one name; no name, the `default`."""
    rules = ctx.rules
    if not rules.institution_location:
        return None, None
    name = text(attrs, tags.INSTITUTION, "InstitutionName", repairs)
    if name:
        key = institution_key(name)
        if key in rules.institution_names:
            return {"display": rules.institution_names[key]}, rules.rule("institution", "name", key)
        return {"display": name}, rules.rule("institution", "location")
    if rules.institution_default:
        return {"display": rules.institution_default}, rules.rule("institution", "default")
    return None, None


def _note_text(note) -> str:
    """A repair note as a FHIR string: no control characters, at most MAX_NOTE characters."""
    note = clean_text(str(note), "note", None) or "?"
    return note if len(note) <= MAX_NOTE else note[:MAX_NOTE - 3] + "..."


def _notes(repairs: list) -> list[dict]:
    """ImagingStudy.note: one Annotation per repair the source or the mapping made."""
    texts = list(dict.fromkeys(_note_text(note) for note in repairs))
    if len(texts) > MAX_NOTES:
        texts[MAX_NOTES - 1:] = [f"... and {len(texts) - MAX_NOTES + 1} more repairs"]
    return [{"authorString": NOTE_AUTHOR, "text": text} for text in texts]
