"""StudyRecord (DICOM JSON) -> FHIR R4 ImagingStudy + Patient (the R4 ImagingStudy mappings to
DICOM).

Pure: the output depends only on the record and the context, and is the same dict (same key
order, same list order) whatever order the archive answered in: series are sorted by Series
Number then UID, instances by Instance Number then UID.

What is broken is repaired or left out and said in `MappedStudy.repairs`; only a study that
cannot be represented at all raises MappingError. Repair notes name attributes and, for
dates, codes and counts, the offending value; never patient names or identifiers. The
ImagingStudy carries them, with the source's own notes (`StudyRecord.repairs`), as
`note` annotations (notes.py): whoever reads the study sees what the facade changed or left
out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.ids import valid_id
from app.mapping import claims, codes, private, tags
from app.mapping.codings import codeable_concepts
from app.mapping.context import MappingContext
from app.mapping.datetimes import fhir_datetime
from app.mapping.errors import MappingError
from app.mapping.notes import note_annotations, note_text
from app.mapping.patient import map_patient
from app.mapping.record import StudyRecord
from app.mapping.request import accession_identifier, reasons
from app.mapping.series import map_series_list
from app.mapping.shape import checked
from app.mapping.terms import location, modality_coding
from app.mapping.vr import all_text, first, name_displays, text, unsigned, valid_uid

DICOM_UID_SYSTEM = "urn:dicom:uid"


@dataclass
class MappedStudy:
    """The FHIR resources of one study (plain dicts) and the repair notes."""

    imaging_study: dict
    patient: dict
    repairs: list[str] = field(default_factory=list)


def map_study(record: StudyRecord, ctx: MappingContext) -> MappedStudy:
    """Map one StudyRecord to FHIR R4 ImagingStudy and Patient dicts (see module doc).

    Each step adds its elements in R4's element order (the tests compare JSON text), so the
    order of the steps is the order of the resource.
    """
    repairs: list[str] = []
    attrs = checked(record.attrs, repairs)
    uid = _usable_study_uid(record, attrs, ctx, repairs)
    noted: set = set()  # unknown modalities already noted: one note per value and study
    patient = map_patient(attrs, uid, ctx, repairs)
    offset = first(attrs, tags.TZ_OFFSET)
    series = map_series_list(record, offset, ctx, noted, repairs)
    if not series:
        raise MappingError("none of the study's series has a usable SeriesInstanceUID")
    study, accession = _identified_study(uid, attrs, ctx, repairs)
    _add_modalities(study, attrs, series, ctx, noted, repairs)
    _add_subject_and_start(study, patient, attrs, offset, ctx, repairs)
    _add_request_and_physicians(study, accession, attrs, ctx)
    _add_counts(study, attrs, series, ctx, repairs)
    _add_procedure_location_reasons(study, attrs, ctx, repairs)
    private.apply(study, "study", attrs, "ImagingStudy", ctx, repairs, "study")
    repairs = _add_notes(study, record, repairs, ctx)
    study["series"] = series
    if "extension" in study:  # R4 element order: extensions right after meta
        study = {
            "resourceType": study.pop("resourceType"),
            "id": study.pop("id"),
            "meta": study.pop("meta"),
            "extension": study.pop("extension"),
            **study,
        }
    return MappedStudy(imaging_study=study, patient=patient, repairs=repairs)


def _usable_study_uid(record: StudyRecord, attrs: dict, ctx: MappingContext, repairs: list) -> str:
    """The StudyInstanceUID, which is also the resource's id; MappingError for a study that
    cannot become an ImagingStudy at all."""
    from_attrs = first(attrs, tags.STUDY_UID)
    from_record = (record.uid or "").strip() or None
    if from_attrs and from_record and from_attrs != from_record:
        raise MappingError("StudyInstanceUID of the attributes differs from the record's uid")
    uid = from_attrs or from_record
    if not uid:
        raise MappingError("no StudyInstanceUID")
    if not valid_id(uid):
        raise MappingError("StudyInstanceUID is not a valid FHIR id ([A-Za-z0-9-.]{1,64})")
    if not valid_id(ctx.source):
        raise MappingError(f"source name {ctx.source!r} is not a valid FHIR id")
    if not record.series:
        raise MappingError("the study has no series")
    if not valid_uid(uid):
        repairs.append(
            "StudyInstanceUID is not a valid DICOM UID (digits and dots, no leading zeros); kept as the archive gave it"
        )
    return uid


def _identified_study(uid: str, attrs: dict, ctx: MappingContext, repairs: list) -> tuple[dict, dict | None]:
    """(the resource up to status, the accession identifier that basedOn repeats)."""
    study: dict = {"resourceType": "ImagingStudy", "id": uid, "meta": claims.meta("ImagingStudy")}
    ctx.trace("ImagingStudy.id", [tags.STUDY_UID])
    ctx.trace("ImagingStudy.meta.profile", (), None, "the profile every ImagingStudy claims (fhir_profiles/structure)")
    identifiers = [{"system": DICOM_UID_SYSTEM, "value": "urn:oid:" + uid}]
    ctx.trace("ImagingStudy.identifier[0]", [tags.STUDY_UID])
    accession, rule = accession_identifier(attrs, ctx, repairs)
    if accession:
        identifiers.append(accession)
        ctx.trace("ImagingStudy.identifier[1]", [tags.ACCESSION, tags.ACCESSION_ISSUER])
        ctx.trace("ImagingStudy.identifier[1].system", [tags.ACCESSION_ISSUER], rule)
    study["identifier"] = identifiers
    study["status"] = "available"
    ctx.trace("ImagingStudy.status", (), None, "the study is held by the archive")
    return study, accession


def _add_modalities(
    study: dict, attrs: dict, series: list[dict], ctx: MappingContext, noted: set, repairs: list
) -> None:
    """ImagingStudy.modality: ModalitiesInStudy (0008,0061) where the archive answered it,
    else the distinct modalities of the series."""
    listed = all_text(attrs, tags.MODALITIES_IN_STUDY)
    modalities = _listed_modalities(listed, ctx, noted, repairs) if listed else _series_modalities(series, ctx)
    if modalities:
        study["modality"] = modalities


def _listed_modalities(listed: list[str], ctx: MappingContext, noted: set, repairs: list) -> list[dict]:
    modalities: list[dict] = []
    for value in listed:
        coding, rule = modality_coding(value, "ModalitiesInStudy", noted, repairs, ctx)
        if coding and coding not in modalities:
            ctx.trace(f"ImagingStudy.modality[{len(modalities)}]", [tags.MODALITIES_IN_STUDY], rule)
            modalities.append(coding)
    return modalities


def _series_modalities(series: list[dict], ctx: MappingContext) -> list[dict]:
    modalities: list[dict] = []
    for index, entry in enumerate(series):
        if entry["modality"] not in modalities:
            found = ctx.recorder.explain(f"ImagingStudy.series[{index}].modality") if ctx.recorder else None
            ctx.trace(
                f"ImagingStudy.modality[{len(modalities)}]",
                [tags.MODALITY],
                found[1].rule if found else None,
                "the distinct series modalities",
            )
            modalities.append(dict(entry["modality"]))
    return modalities


def _add_subject_and_start(
    study: dict, patient: dict, attrs: dict, offset: str | None, ctx: MappingContext, repairs: list
) -> None:
    """ImagingStudy.subject and ImagingStudy.started (in the study's offset, else the
    source's zone)."""
    study["subject"] = {"reference": "Patient/" + patient["id"]}
    ctx.trace(
        "ImagingStudy.subject",
        [tags.PATIENT_ID, tags.ISSUER_OF_PATIENT_ID, tags.ISSUER_QUALIFIERS],
        None,
        "the Patient keyed by (issuer system, Patient ID)",
    )
    started = fhir_datetime(
        first(attrs, tags.STUDY_DATE),
        first(attrs, tags.STUDY_TIME),
        offset,
        ctx.timezone,
        ("StudyDate", "StudyTime"),
        "started",
        repairs,
        ctx.rules.date_formats,
    )
    if started:
        study["started"] = started
        ctx.trace(
            "ImagingStudy.started",
            [tags.STUDY_DATE, tags.STUDY_TIME, tags.TZ_OFFSET],
            None,
            None if offset else f"local time in the source's zone {ctx.timezone}",
        )


def _add_request_and_physicians(study: dict, accession: dict | None, attrs: dict, ctx: MappingContext) -> None:
    """basedOn (the ServiceRequest the accession number identifies), referrer, interpreter and
    endpoint."""
    if accession:
        based_on = dict(accession, type=codes.copy_concept(codes.ACCESSION_TYPE))
        if "assigner" in based_on:
            based_on["assigner"] = dict(based_on["assigner"])
        study["basedOn"] = [{"type": "ServiceRequest", "identifier": based_on}]
        ctx.trace("ImagingStudy.basedOn", [tags.ACCESSION, tags.ACCESSION_ISSUER])
    referrers = name_displays(attrs, tags.REFERRING)
    if referrers:
        study["referrer"] = {"display": referrers[0]}
        ctx.trace("ImagingStudy.referrer", [tags.REFERRING])
    readers = name_displays(attrs, tags.READING)
    if readers:
        study["interpreter"] = [{"display": name} for name in readers]
        ctx.trace("ImagingStudy.interpreter", [tags.READING])
    study["endpoint"] = [{"reference": "Endpoint/" + ctx.source}]
    ctx.trace("ImagingStudy.endpoint", (), None, f"the Endpoint of source {ctx.source}")


def _add_counts(study: dict, attrs: dict, series: list[dict], ctx: MappingContext, repairs: list) -> None:
    """numberOfSeries and numberOfInstances: the archive's counts where it answered them, else
    the series and instances mapped."""
    series_count = unsigned(attrs, tags.STUDY_SERIES_COUNT, "NumberOfStudyRelatedSeries", repairs)
    study["numberOfSeries"] = series_count if series_count is not None else len(series)
    ctx.trace(
        "ImagingStudy.numberOfSeries",
        [tags.STUDY_SERIES_COUNT] if series_count is not None else [tags.SERIES_UID],
        None,
        None if series_count is not None else "series counted",
    )
    instance_count = unsigned(attrs, tags.STUDY_INSTANCE_COUNT, "NumberOfStudyRelatedInstances", repairs)
    study["numberOfInstances"] = (
        instance_count if instance_count is not None else sum(s["numberOfInstances"] for s in series)
    )
    ctx.trace(
        "ImagingStudy.numberOfInstances",
        [tags.STUDY_INSTANCE_COUNT] if instance_count is not None else [tags.SOP_INSTANCE_UID],
        None,
        None if instance_count is not None else "instances counted",
    )


def _add_procedure_location_reasons(study: dict, attrs: dict, ctx: MappingContext, repairs: list) -> None:
    """procedureCode, location, reasonCode and description."""
    procedures = codeable_concepts(attrs, tags.PROCEDURE_CODES, "ProcedureCodeSequence", repairs)
    if procedures:
        study["procedureCode"] = procedures
        ctx.trace("ImagingStudy.procedureCode", [tags.PROCEDURE_CODES])
    place, rule = location(attrs, ctx, repairs)
    if place:
        study["location"] = place
        ctx.trace("ImagingStudy.location", [tags.INSTITUTION] if first(attrs, tags.INSTITUTION) else (), rule)
    found = reasons(attrs, repairs)
    if found:
        study["reasonCode"] = found
        ctx.trace("ImagingStudy.reasonCode", [tags.REASON_CODES, tags.REASON_TEXT, tags.REQUEST_ATTRIBUTES])
    description = text(attrs, tags.STUDY_DESCRIPTION, "StudyDescription", repairs)
    if description:
        study["description"] = description
        ctx.trace("ImagingStudy.description", [tags.STUDY_DESCRIPTION])


def _add_notes(study: dict, record: StudyRecord, repairs: list, ctx: MappingContext) -> list[str]:
    """ImagingStudy.note from the source's and the mapping's repairs; returns the mapping's
    repairs as the notes word them, each once."""
    description = study.pop("description", None)  # R4 order: note, then description
    repairs = [note_text(note) for note in dict.fromkeys(repairs)]
    notes = note_annotations([*(record.repairs or []), *repairs])
    if notes:
        study["note"] = notes
        ctx.trace("ImagingStudy.note", (), None, "what was repaired or left out to read the study")
    if description:
        study["description"] = description
    return repairs
