"""ImagingStudy.series.instance from the instance attributes of one series (SOP Common
module, PS3.3 C.12.1).

An instance without a SOP Instance UID that is a FHIR id, or without a SOP Class UID,
cannot be listed: it is left out and counted, with one note per series and kind of problem
rather than one per instance (a broken series may hold thousands).
"""

from __future__ import annotations

from collections import Counter
from functools import cache

from app.ids import valid_id
from app.mapping import codes, tags
from app.mapping.context import MappingContext
from app.mapping.values import clean_text, fhir_code
from app.mapping.vr import first, items, raw_values, unsigned, valid_uid

#: the notes on a series' instances, in the order they are written, by problem
_PROBLEMS = (
    ("missing_uid", "{} instance(s) without SOPInstanceUID left out"),
    ("bad_uid", "{} instance(s) whose SOPInstanceUID is not a valid FHIR id left out"),
    ("no_class", "{} instance(s) without SOPClassUID left out"),
    ("not_dicom_uid", "{} instance(s) whose SOPInstanceUID is not a valid DICOM UID; kept as the archive gave it"),
    ("duplicates", "{} duplicate instance(s) left out"),
    ("bad_numbers", "{} instance(s) with an InstanceNumber that is not a valid unsigned integer; number left out"),
)


def map_instances(instances: list[dict], series_uid: str, repairs: list) -> list[dict]:
    """The series' instances by Instance Number then UID (instances without a number last),
    each UID once, so the output does not depend on the order the archive answered in."""
    problems: Counter = Counter()
    bad_numbers: list[str] = []  # counted, not noted: one note per series
    rows = [row for row in (_row(inst, problems, bad_numbers) for inst in instances) if row is not None]
    problems["bad_numbers"] = len(bad_numbers)
    rows.sort(key=lambda row: row[:3])
    out = []
    seen: set[str] = set()
    for no_number, number, uid, sop_class, inst in rows:
        if uid in seen:
            problems["duplicates"] += 1
            continue
        seen.add(uid)
        entry = {"uid": uid, "sopClass": _sop_class(sop_class)}
        if not no_number:
            entry["number"] = number
        title = _instance_title(inst, repairs)
        if title:
            entry["title"] = title
        out.append(entry)
    for problem, note in _PROBLEMS:
        if problems[problem]:
            repairs.append(f"series {series_uid}: " + note.format(problems[problem]))
    return out


def _row(inst: dict, problems: Counter, bad_numbers: list[str]) -> tuple | None:
    """(no number, number, UID, SOP Class UID, attributes) of a listable instance; None (and
    the problem counted) for one that cannot be listed. An Instance Number that is not an
    unsigned integer is left out and named in `bad_numbers`."""
    uid = first(inst, tags.SOP_INSTANCE_UID)
    if uid is None:
        problems["missing_uid"] += 1
        return None
    if not valid_id(uid):
        problems["bad_uid"] += 1
        return None
    sop_class = fhir_code(first(inst, tags.SOP_CLASS_UID))
    if sop_class is None:
        problems["no_class"] += 1
        return None
    if not valid_uid(uid):
        problems["not_dicom_uid"] += 1
    number = unsigned(inst, tags.INSTANCE_NUMBER, "InstanceNumber", bad_numbers)
    return number is None, number or 0, uid, sop_class, inst


@cache
def _sop_class_name(uid: str) -> str | None:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name and name != uid else None


def _sop_class(uid: str) -> dict:
    """instance.sopClass: the SOP Class UID as a urn:oid: code of urn:ietf:rfc:3986, as R4's
    sop-class value set codes it."""
    coding = {"system": codes.RFC3986, "code": "urn:oid:" + uid}
    name = _sop_class_name(uid) if valid_uid(uid) else None
    if name:
        coding["display"] = name
    return coding


def _instance_title(inst: dict, repairs: list) -> str | None:
    """instance.title: Content Label, else the Concept Name's meaning, Document Title or the
    Image Type values, whichever an instance of its kind has."""
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
                    label = (
                        "\\".join(k.strip() if isinstance(k, str) else str(k) for k in kinds if k is not None).strip(
                            "\\ "
                        )
                        or None
                    )
    return clean_text(label, "instance title", repairs) if label else None


def trace_instances(instances: list[dict], at: str, ctx: MappingContext) -> None:
    """Provenance of the instance list at `at` (a series path), element by element."""
    ctx.trace(at + ".instance", [tags.SOP_INSTANCE_UID])
    for i, entry in enumerate(instances):
        ctx.trace(f"{at}.instance[{i}].uid", [tags.SOP_INSTANCE_UID])
        ctx.trace(f"{at}.instance[{i}].sopClass", [tags.SOP_CLASS_UID])
        ctx.trace(f"{at}.instance[{i}].number", [tags.INSTANCE_NUMBER])
        if "title" in entry:
            ctx.trace(
                f"{at}.instance[{i}].title",
                [tags.CONTENT_LABEL, tags.CONCEPT_NAME, tags.DOCUMENT_TITLE, tags.IMAGE_TYPE],
                None,
                "Content Label, else Concept Name, Document Title or Image Type",
            )
