"""The shape of DICOM JSON (PS3.18 F.2), checked once before anything reads a header.

Attributes are dicts keyed by 8-hex-digit tags, each {"vr": ..., "Value": [...]}. An
archive's answer (or a file's header) may hold anything: an element that is not an object, a
VR that does not fit the tag (a US value in a DA), values of the wrong JSON type, control
characters, values far longer or more numerous than any real header's. `checked` brings every
attribute the mapping reads (tags.READ) into the shape its VR gives it (PS3.6), so that the
readers (vr.py) never raise on bad data.
"""

from __future__ import annotations

from functools import cache

from app.mapping import tags
from app.mapping.values import CONTROL, MAX_TEXT, clean_string, shown

#: most values (or sequence items) of one attribute kept; real headers hold a handful
MAX_VALUES = 100

_TEXT_VRS = frozenset(["AE", "AS", "AT", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"])
_NUMBER_VRS = frozenset(["DS", "IS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"])
_VALUE_TYPES = {"text": "strings", "number": "numbers", "PN": "person names", "SQ": "items"}
#: what `_checked_value` returns for a value of the wrong JSON type
_BAD = object()


def checked(attrs: object, repairs: list) -> dict:
    """`attrs` with every attribute the mapping reads in the shape PS3.18 F.2 gives it.

    What cannot be read as the tag's VR is left out, oversized values and sequences are cut
    (`MAX_TEXT`, `MAX_VALUES`), and `repairs` says so, naming the attribute, never quoting a
    value. Returns `attrs` itself when nothing needed fixing, so a sound header costs no copy.
    """
    if not isinstance(attrs, dict):
        if attrs:
            repairs.append("attributes that are not a DICOM JSON object were ignored")
        return {}
    out = None
    for tag, element in attrs.items():
        if tag not in tags.READ:
            continue
        fixed = _checked_element(tag, element, repairs)
        if fixed is element:
            continue
        if out is None:
            out = dict(attrs)
        if fixed is None:
            del out[tag]
        else:
            out[tag] = fixed
    return attrs if out is None else out


def _kind(vr: object) -> str:
    """What a VR's values are in DICOM JSON: text, number, PN, SQ, or binary (no Value)."""
    if vr in _TEXT_VRS:
        return "text"
    if vr in _NUMBER_VRS:
        return "number"
    return vr if vr in ("PN", "SQ") else "binary"


@cache
def _attribute(tag: str) -> tuple[str, str, str]:
    """(keyword, VR, kind of values) of an attribute the mapping reads, from pydicom's DICOM
    dictionary."""
    from pydicom.datadict import dictionary_VR, keyword_for_tag

    number = int(tag, 16)
    vr = dictionary_VR(number)
    return keyword_for_tag(number) or tag, vr, _kind(vr)


def _checked_element(tag: str, element: object, notes: list) -> object:
    """The element as mapping reads it, the same object when it is fine; None to leave out."""
    keyword, vr, kind = _attribute(tag)
    if not isinstance(element, dict):
        notes.append(f"{keyword} is not a DICOM JSON attribute; left out")
        return None
    found = element.get("vr")
    if found != vr and not _vr_fits(found, keyword, vr, kind, notes):
        return None
    values = element.get("Value")
    if values is None:
        if kind != "binary" and ("BulkDataURI" in element or "InlineBinary" in element):
            notes.append(f"{keyword} came as bulk data, not as values; left out")
        return element
    if not isinstance(values, list):
        notes.append(f"{keyword}: Value is not a list; left out")
        return None
    # mapping reads no binary attribute's values
    if kind == "binary" or _read_as_they_are(values, vr, kind):
        return element
    kept = _checked_values(values, keyword, vr, kind, notes)
    if len(kept) == len(values) and all(a is b for a, b in zip(kept, values, strict=True)):
        return element
    return {**element, "Value": kept}


def _vr_fits(found: object, keyword: str, vr: str, kind: str, notes: list) -> bool:
    """Whether values written under VR `found`, not the tag's VR `vr`, can be read as `vr`.

    A VR of the same kind (an LO for a SH) is read as the tag's; one whose values are of
    another JSON type (a US for a DA) cannot be.
    """
    if not isinstance(found, str):
        notes.append(f"{keyword} has no VR; read as {vr}")
    elif _kind(found) != kind:
        shown_vr = found if found.isalpha() and len(found) == 2 else shown(found, 8)
        notes.append(f"{keyword} has VR {shown_vr}, not {vr}; left out")
        return False
    else:
        notes.append(f"{keyword} has VR {found}, not {vr}; read as {vr}")
    return True


def _read_as_they_are(values: list, vr: str, kind: str) -> bool:
    """Whether every value is already what `_checked_value` would make of it, without a note.

    One quick pass for what nearly every element of an archive's answer is (plain strings,
    plain numbers), so that the checks of each value run only where one may need fixing.
    """
    if len(values) > MAX_VALUES:
        return False
    if kind == "text":
        uid = vr == "UI"
        for value in values:
            if type(value) is not str or len(value) > MAX_TEXT or CONTROL.search(value):
                return False
            if uid and value.endswith((" ", "\x00")):
                return False
        return True
    if kind == "number":
        return all(type(value) is int or type(value) is float for value in values)
    return False


def _checked_values(values: list, keyword: str, vr: str, kind: str, notes: list) -> list:
    """The values (at most MAX_VALUES) that can be read as the VR, each in its checked form."""
    kept = []
    bad = 0
    for value in values[:MAX_VALUES]:
        fixed = _checked_value(value, vr, kind, keyword, notes)
        if fixed is _BAD:
            bad += 1
        else:
            kept.append(fixed)
    if len(values) > MAX_VALUES:
        what = "items" if kind == "SQ" else "values"
        notes.append(f"{keyword} has {len(values)} {what}; the first {MAX_VALUES} kept")
    if bad:
        notes.append(f"{keyword} has {bad} value(s) that are not {_VALUE_TYPES[kind]}; left out")
    return kept


def _checked_value(value: object, vr: str, kind: str, label: str, notes: list) -> object:
    """The value as mapping reads it, or _BAD."""
    if value is None:  # PS3.18 F.2.5: an empty value of a multi-valued attribute
        return None
    if kind == "SQ":
        return checked(value, notes) if isinstance(value, dict) else _BAD
    if isinstance(value, str):
        return clean_string(value, label, notes, vr == "UI")
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if kind == "PN" and isinstance(value, dict):
        groups = {}
        for group in ("Alphabetic", "Ideographic", "Phonetic"):
            part = value.get(group)
            if isinstance(part, str):
                groups[group] = clean_string(part, label, notes)
            elif part is not None:
                return _BAD
        return groups if groups != value else value
    return _BAD
