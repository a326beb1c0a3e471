"""ImagingStudy.series from the series of a StudyRecord (General Series module, PS3.3 C.7.3.1).

Series are sorted by Series Number then UID (series without a number last), so the output
does not depend on the order the archive answered in; a series the archive listed twice is
one series with the instances of both.
"""

from __future__ import annotations

from app.ids import valid_id
from app.mapping import codes, private, tags
from app.mapping.context import MappingContext
from app.mapping.datetimes import fhir_datetime
from app.mapping.instances import map_instances, trace_instances
from app.mapping.record import SeriesRecord, StudyRecord
from app.mapping.shape import checked
from app.mapping.terms import body_site, modality_coding
from app.mapping.values import clean_text
from app.mapping.vr import first, name_displays, text, unsigned, valid_uid


def map_series_list(
    record: StudyRecord, offset: str | None, ctx: MappingContext, noted: set, repairs: list
) -> list[dict]:
    """Every usable series of the record, in order; `offset` is the study's
    TimezoneOffsetFromUTC, for series that have none of their own."""
    merged: dict[str, tuple[int | None, dict, list]] = {}
    for no_number, number, uid, attrs, series_record in _sorted_rows(record.series, repairs):
        if uid in merged:  # the archive answered a series twice: one series, all instances
            merged[uid][2].extend(series_record.instances)
            repairs.append(f"series {uid} listed more than once; merged")
            continue
        merged[uid] = (None if no_number else number, attrs, list(series_record.instances))
    return [
        _map_series(attrs, instances, uid, number, offset, ctx, noted, repairs, index)
        for index, (uid, (number, attrs, instances)) in enumerate(merged.items())
    ]


def _sorted_rows(series_records: list[SeriesRecord], repairs: list) -> list[tuple]:
    """(no number, number, UID, checked attributes, record) of each series with a UID that is
    a FHIR id, by number then UID; the others are left out and counted."""
    rows = []
    missing = invalid = 0
    for series_record in series_records:
        attrs = checked(series_record.attrs, repairs)
        uid = first(attrs, tags.SERIES_UID)
        if uid is None:
            missing += 1
            continue
        if not valid_id(uid):
            invalid += 1
            continue
        if not valid_uid(uid):
            repairs.append(f"series {uid}: SeriesInstanceUID is not a valid DICOM UID; kept as the archive gave it")
        number = unsigned(attrs, tags.SERIES_NUMBER, f"series {uid}: SeriesNumber", repairs)
        rows.append((number is None, number or 0, uid, attrs, series_record))
    if missing:
        repairs.append(f"{missing} series without SeriesInstanceUID left out")
    if invalid:
        repairs.append(f"{invalid} series whose SeriesInstanceUID is not a valid FHIR id left out")
    rows.sort(key=lambda row: row[:3])
    return rows


def _map_series(
    attrs: dict,
    instances: list[dict],
    uid: str,
    number: int | None,
    offset: str | None,
    ctx: MappingContext,
    noted: set,
    repairs: list,
    index: int = 0,
) -> dict:
    """One series element, its elements in R4 order; `index` is its place in the list, for
    provenance paths."""
    where = f"series {uid}"
    at = f"ImagingStudy.series[{index}]"
    instances = [checked(inst, repairs) for inst in instances]
    series = _identified_series(attrs, uid, number, at, where, ctx, noted, repairs)
    mapped_instances = map_instances(instances, uid, repairs)
    count = unsigned(attrs, tags.SERIES_INSTANCE_COUNT, "NumberOfSeriesRelatedInstances", repairs)
    series["numberOfInstances"] = count if count is not None else len(mapped_instances)
    ctx.trace(
        at + ".numberOfInstances",
        [tags.SERIES_INSTANCE_COUNT] if count is not None else [tags.SOP_INSTANCE_UID],
        None,
        None if count is not None else "instances counted",
    )
    _add_body(series, attrs, instances, at, where, ctx, repairs)
    _add_started_and_performers(series, attrs, offset, at, where, ctx, repairs)
    if mapped_instances:
        series["instance"] = mapped_instances
        if ctx.recorder is not None:
            trace_instances(mapped_instances, at, ctx)
    private.apply(series, "series", attrs, at, ctx, repairs, where)
    return series


def _identified_series(
    attrs: dict, uid: str, number: int | None, at: str, where: str, ctx: MappingContext, noted: set, repairs: list
) -> dict:
    """uid, number, modality and description: what names the series."""
    series: dict = {"uid": uid}
    ctx.trace(at + ".uid", [tags.SERIES_UID])
    if number is not None:
        series["number"] = number
        ctx.trace(at + ".number", [tags.SERIES_NUMBER])
    modality, rule = modality_coding(first(attrs, tags.MODALITY), "Modality", noted, repairs, ctx)
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
    return series


def _add_body(
    series: dict, attrs: dict, instances: list[dict], at: str, where: str, ctx: MappingContext, repairs: list
) -> None:
    """series.bodySite and series.laterality."""
    body_part = first(attrs, tags.BODY_PART)
    if body_part:
        body_part = clean_text(body_part, "BodyPartExamined", repairs)
        # checked() took control characters out of the header: nothing is left to empty the value
        assert body_part is not None
        series["bodySite"], rule = body_site(body_part, where, ctx, repairs)
        ctx.trace(at + ".bodySite", [tags.BODY_PART], rule)
    laterality = _laterality(attrs, instances, where, repairs)
    if laterality:
        series["laterality"] = laterality
        ctx.trace(at + ".laterality", [tags.LATERALITY] if first(attrs, tags.LATERALITY) else [tags.IMAGE_LATERALITY])


def _laterality(attrs: dict, instances: list[dict], where: str, repairs: list) -> dict | None:
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


def _add_started_and_performers(
    series: dict, attrs: dict, offset: str | None, at: str, where: str, ctx: MappingContext, repairs: list
) -> None:
    """series.started (the series' own offset, else the study's) and series.performer."""
    started = fhir_datetime(
        first(attrs, tags.SERIES_DATE),
        first(attrs, tags.SERIES_TIME),
        first(attrs, tags.TZ_OFFSET) or offset,
        ctx.timezone,
        ("SeriesDate", "SeriesTime"),
        f"{where} started",
        repairs,
        ctx.rules.date_formats,
    )
    if started:
        series["started"] = started
        ctx.trace(at + ".started", [tags.SERIES_DATE, tags.SERIES_TIME, tags.TZ_OFFSET])
    performers = _performers(attrs)
    if performers:
        series["performer"] = performers
        ctx.trace(at + ".performer", [tags.PERFORMING, tags.OPERATORS])


def _performers(attrs: dict) -> list[dict]:
    """Performing physicians (with the PRF function), then operators who are not also one."""
    out = []
    physicians = name_displays(attrs, tags.PERFORMING)
    for name in physicians:
        out.append({"function": codes.copy_concept(codes.PERFORMER_FUNCTION), "actor": {"display": name}})
    for name in name_displays(attrs, tags.OPERATORS):
        if name not in physicians:
            out.append({"actor": {"display": name}})
    return out
