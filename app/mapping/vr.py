"""Values of checked DICOM JSON attributes (shape.py), read as their VR says (PS3.5 6.2).

Readers never raise on bad data: they return None (or an empty list) and, where the caller
passes a `repairs` list, say in it what was left out. Text is stripped of DICOM's padding;
a multi-valued attribute may come as one backslash-joined string (PS3.5 6.4), as some
archives answer.
"""

from __future__ import annotations

import re
from datetime import date, datetime

from app.mapping import codes
from app.mapping.values import clean_text

# --- plain values ------------------------------------------------------------------------


def raw_values(attrs: dict, tag: str) -> list:
    """The Value list of an attribute ([] when absent or empty)."""
    element = attrs.get(tag)
    if not element:
        return []
    return element.get("Value") or []


def _as_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip(" \x00\t\r\n")
        return value or None
    if isinstance(value, dict):  # a PN handed to a text reader
        return pn_display(value)
    return str(value)


def first(attrs: dict, tag: str) -> str | None:
    """First value as stripped text, None when absent or empty."""
    values = raw_values(attrs, tag)
    if not values:
        return None
    return _as_text(values[0])


def all_text(attrs: dict, tag: str) -> list[str]:
    """All non-empty values as stripped text (a value holding "\\" is split, as some
    archives answer a multi-valued attribute as one string)."""
    out: list[str] = []
    for value in raw_values(attrs, tag):
        text = _as_text(value)
        if text is None:
            continue
        if "\\" in text:
            out.extend(part for part in (p.strip() for p in text.split("\\")) if part)
        else:
            out.append(text)
    return out


def items(attrs: dict, tag: str) -> list[dict]:
    """Items of a sequence attribute (non-dict entries are ignored)."""
    return [item for item in raw_values(attrs, tag) if isinstance(item, dict)]


def text(attrs: dict, tag: str, label: str, repairs: list | None) -> str | None:
    """First value as a clean FHIR string."""
    return clean_text(first(attrs, tag), label, repairs)


def valid_uid(uid: str) -> bool:
    """A DICOM UID (PS3.5 9.1): an OID of at most 64 characters, no leading zeros."""
    return len(uid) <= 64 and codes.OID_RE.fullmatch(uid) is not None


# --- numbers (IS) ------------------------------------------------------------------------

_UNSIGNED_MAX = 2**31 - 1


def parse_int(value: object) -> int | None:
    """IS value (JSON number or string) as int; None if it is not an integer."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        value = value.strip()
        try:
            return int(value)
        except ValueError:
            try:
                as_float = float(value)
            except ValueError:
                return None
            return int(as_float) if as_float.is_integer() else None
    return None


def unsigned(attrs: dict, tag: str, label: str, repairs: list | None) -> int | None:
    """First value as a FHIR unsignedInt (0 .. 2^31-1); anything else is left out."""
    values = raw_values(attrs, tag)
    if not values or values[0] is None or values[0] == "":
        return None
    number = parse_int(values[0])
    if number is None or number < 0 or number > _UNSIGNED_MAX:
        if repairs is not None:
            repairs.append(f"{label} {values[0]!r} is not a valid unsigned integer; left out")
        return None
    return number


# --- person names (PN) -------------------------------------------------------------------


def pn_groups(value: object) -> tuple[str, str, str]:
    """(alphabetic, ideographic, phonetic) component groups of a PN value.

    DICOM JSON gives a dict; a plain "A=I=P" string (some archives) is accepted too.
    """
    if isinstance(value, dict):
        return (
            (value.get("Alphabetic") or "").strip(),
            (value.get("Ideographic") or "").strip(),
            (value.get("Phonetic") or "").strip(),
        )
    if isinstance(value, str):
        parts = value.split("=")
        parts += [""] * (3 - len(parts))
        return parts[0].strip(), parts[1].strip(), parts[2].strip()
    return "", "", ""


def pn_components(group: str) -> list[str]:
    """[family, given, middle, prefix, suffix] of one component group."""
    parts = [part.strip() for part in group.split("^")[:5]]
    parts += [""] * (5 - len(parts))
    return parts


def render_name(group: str) -> str | None:
    """One group as a display name: prefix given middle family suffix ("Doe^John" ->
    "John Doe")."""
    family, given, middle, prefix, suffix = pn_components(group)
    words = [w for w in (prefix, given, middle, family, suffix) if w]
    return " ".join(" ".join(words).split()) or None


def pn_display(value: object) -> str | None:
    """Readable display of a PN value: the first non-empty group, rendered."""
    for group in pn_groups(value):
        if group:
            rendered = render_name(group)
            if rendered:
                return rendered
    return None


def name_displays(attrs: dict, tag: str) -> list[str]:
    """Display names of every value of a PN attribute, duplicates dropped, order kept."""
    seen: list[str] = []
    for value in raw_values(attrs, tag):
        shown = pn_display(value)
        if shown:
            shown = clean_text(shown, "name", None)
        if shown and shown not in seen:
            seen.append(shown)
    return seen


# --- dates and times (DA, TM, DT, TimezoneOffsetFromUTC) ---------------------------------

_DA = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DA_LEGACY = re.compile(r"(\d{4})[.\-](\d{2})[.\-](\d{2})")  # ACR-NEMA "YYYY.MM.DD"
_TM = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?")
_TM_LEGACY = re.compile(r"(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6}))?)?")  # "HH:MM:SS.frac"
_OFFSET = re.compile(r"([+-])(\d{2})(\d{2})")


def parse_da(value: str | None) -> date | None:
    """DA "YYYYMMDD" (or the retired "YYYY.MM.DD") as a date; None if not a real date."""
    if not value:
        return None
    match = _DA.fullmatch(value) or _DA_LEGACY.fullmatch(value)
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def parse_da_with(value: str | None, formats: tuple | list = ()) -> tuple[date | None, str | None]:
    """(date, the extra format that read it) for a DA, trying a profile's `dates.formats`
    (strptime patterns such as "%d.%m.%Y") when the value is not a DICOM date; the format is
    None when the value was a DICOM date (or nothing read it)."""
    day = parse_da(value)
    if day is not None or not value or not formats:
        return day, None
    for pattern in formats:
        try:
            return datetime.strptime(value.strip(), pattern).date(), pattern
        except ValueError:
            continue
    return None, None


def parse_tm(value: str | None) -> tuple[int, int, int, str] | None:
    """TM "HH[MM[SS[.F{1,6}]]]" (or the retired "HH:MM[:SS]") as (h, m, s, fraction digits)."""
    if not value:
        return None
    match = _TM.fullmatch(value) or _TM_LEGACY.fullmatch(value)
    if match is None:
        return None
    hour = int(match[1])
    minute = int(match[2] or 0)
    second = int(match[3] or 0)
    fraction = (match[4] or "").rstrip("0")
    if hour > 23 or minute > 59 or second > 60:  # 60: DICOM allows a leap second
        return None
    return hour, minute, second, fraction


def parse_offset(value: str | None) -> int | None:
    """TimezoneOffsetFromUTC "+HHMM"/"-HHMM" in minutes; None when not valid (PS3.3 allows
    -1200 .. +1400)."""
    if not value:
        return None
    match = _OFFSET.fullmatch(value)
    if match is None:
        return None
    hours, minutes = int(match[2]), int(match[3])
    if minutes > 59:
        return None
    total = hours * 60 + minutes
    if match[1] == "-":
        total = -total
    if total < -12 * 60 or total > 14 * 60:
        return None
    return total
