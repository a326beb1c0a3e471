"""DICOM strings made valid FHIR primitives, and values quoted in repair notes.

DICOM text may hold what an R4 `string` cannot (control characters, lone surrogates) and be
far longer than anything a resource should carry; a `code` may not have leading, trailing or
repeated whitespace. Whatever is changed here is said in the caller's repair notes, naming the
attribute (`label`), never quoting a patient's name or identifier.
"""

from __future__ import annotations

import re

#: longest text kept in a FHIR string (DICOM LO is 64 characters, ST 1,024, LT 10,240)
MAX_TEXT = 4096

#: control characters FHIR strings cannot hold, and lone surrogates (from a JSON "\ud800"
#: escape), which no UTF-8 encoder writes
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def clean_string(value: str, label: str, notes: list, uid: bool = False) -> str | None:
    """A string of an archive's answer as the header check (shape.py) keeps it; None for a UID
    with control characters, which without them would name another object (PS3.5 9.1)."""
    if uid and value != value.rstrip(" \x00"):
        value = value.rstrip(" \x00")
        notes.append(f"{label} has padding a UID cannot have (spaces or NULs); removed")
    if CONTROL.search(value):
        if uid:  # without them it would be another UID
            notes.append(f"{label} has control characters; left out")
            return None
        value = CONTROL.sub("", value)
        notes.append(f"{label} had control characters; removed")
    if len(value) > MAX_TEXT:
        value = value[:MAX_TEXT]
        notes.append(f"{label} is longer than {MAX_TEXT} characters; truncated")
    return value


def clean_text(value: str | None, label: str, repairs: list | None) -> str | None:
    """A DICOM string made a valid FHIR string: no control characters, at most MAX_TEXT."""
    if value is None:
        return None
    if CONTROL.search(value):
        value = CONTROL.sub("", value).strip()
        if repairs is not None:
            repairs.append(f"{label} had control characters; removed")
        if not value:
            return None
    if len(value) > MAX_TEXT:
        value = value[:MAX_TEXT].rstrip()
        if repairs is not None:
            repairs.append(f"{label} is longer than {MAX_TEXT} characters; truncated")
    return value


def fhir_code(value: str | None) -> str | None:
    """A FHIR `code`: no leading/trailing whitespace, single inner spaces."""
    if value is None:
        return None
    value = " ".join(value.split())
    return value or None


def shown(value: object, limit: int = 64) -> str:
    """A value quoted for a repair note (repr, so control characters show), at most `limit`
    characters of it."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + "..."
    return repr(value)
