"""Readers for DICOM JSON values (PS3.18 F.2) and their conversion to FHIR primitive forms.

Attributes are dicts keyed by 8-hex-digit tags, each {"vr": ..., "Value": [...]}. An
archive's answer is checked once against that shape (`checked`) before anything reads it;
readers then never raise on bad data: they return None (or an empty list) and, where the
caller passes a `repairs` list, say in it what was left out. Repair notes name attributes
and, for dates, times and codes, the offending value; callers never pass patient names or
identifiers.
"""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.mapping import codes, tags

#: longest text kept in a FHIR string (DICOM LO is 64 characters, ST 1,024, LT 10,240)
MAX_TEXT = 4096
#: most values (or sequence items) of one attribute kept; real headers hold a handful
MAX_VALUES = 100

# control characters FHIR strings cannot hold, and lone surrogates (from a JSON "\ud800"
# escape), which no UTF-8 encoder writes
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
#: R4 id
class MappingError(Exception):
    """A study that cannot be represented as FHIR at all; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --- the shape of DICOM JSON (PS3.18 F.2) -----------------------------------------------

_TEXT_VRS = frozenset("AE AS AT CS DA DT LO LT SH ST TM UC UI UR UT".split())
_NUMBER_VRS = frozenset("DS IS FL FD SL SS UL US SV UV".split())


def _kind(vr) -> str:
    """What a VR's values are in DICOM JSON: text, number, PN, SQ, or binary (no Value)."""
    if vr in _TEXT_VRS:
        return "text"
    if vr in _NUMBER_VRS:
        return "number"
    return vr if vr in ("PN", "SQ") else "binary"


_VALUE_TYPES = {"text": "strings", "number": "numbers", "PN": "person names", "SQ": "items"}


@cache
def _attribute(tag: str) -> tuple[str, str, str]:
    """(keyword, VR, kind of values) of an attribute the mapping reads, from pydicom's DICOM
    dictionary."""
    from pydicom.datadict import dictionary_VR, keyword_for_tag

    number = int(tag, 16)
    vr = dictionary_VR(number)
    return keyword_for_tag(number) or tag, vr, _kind(vr)


def _clean_string(value: str, label: str, notes: list, uid: bool = False):
    if uid and value != value.rstrip(" \x00"):
        value = value.rstrip(" \x00")
        notes.append(f"{label} has padding a UID cannot have (spaces or NULs); removed")
    if _CONTROL.search(value):
        if uid:  # without them it would be another UID
            notes.append(f"{label} has control characters; left out")
            return None
        value = _CONTROL.sub("", value)
        notes.append(f"{label} had control characters; removed")
    if len(value) > MAX_TEXT:
        value = value[:MAX_TEXT]
        notes.append(f"{label} is longer than {MAX_TEXT} characters; truncated")
    return value


def _checked_value(value, vr: str, kind: str, label: str, notes: list):
    """The value as mapping reads it, or _BAD."""
    if value is None:  # PS3.18 F.2.5: an empty value of a multi-valued attribute
        return None
    if kind == "SQ":
        return checked(value, notes) if isinstance(value, dict) else _BAD
    if isinstance(value, str):
        return _clean_string(value, label, notes, vr == "UI")
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if kind == "PN" and isinstance(value, dict):
        groups = {}
        for group in ("Alphabetic", "Ideographic", "Phonetic"):
            part = value.get(group)
            if isinstance(part, str):
                groups[group] = _clean_string(part, label, notes)
            elif part is not None:
                return _BAD
        return groups if groups != value else value
    return _BAD


_BAD = object()


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
            if type(value) is not str or len(value) > MAX_TEXT or _CONTROL.search(value):
                return False
            if uid and value.endswith((" ", "\x00")):
                return False
        return True
    if kind == "number":
        return all(type(value) is int or type(value) is float for value in values)
    return False


def _checked_element(tag: str, element, notes: list):
    """The element as mapping reads it, the same object when it is fine; None to leave out."""
    keyword, vr, kind = _attribute(tag)
    if not isinstance(element, dict):
        notes.append(f"{keyword} is not a DICOM JSON attribute; left out")
        return None
    found = element.get("vr")
    if found != vr:
        if not isinstance(found, str):
            notes.append(f"{keyword} has no VR; read as {vr}")
        elif _kind(found) != kind:
            shown_vr = found if found.isalpha() and len(found) == 2 else shown(found, 8)
            notes.append(f"{keyword} has VR {shown_vr}, not {vr}; left out")
            return None
        else:
            notes.append(f"{keyword} has VR {found}, not {vr}; read as {vr}")
    values = element.get("Value")
    if values is None:
        if kind != "binary" and ("BulkDataURI" in element or "InlineBinary" in element):
            notes.append(f"{keyword} came as bulk data, not as values; left out")
        return element
    if not isinstance(values, list):
        notes.append(f"{keyword}: Value is not a list; left out")
        return None
    if kind == "binary":
        return element  # mapping reads no binary attribute's values
    if _read_as_they_are(values, vr, kind):
        return element
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
        notes.append(f"{keyword} has {bad} value(s) that are not {_VALUE_TYPES[kind]}; "
                     "left out")
    if len(kept) == len(values) and all(a is b for a, b in zip(kept, values)):
        return element
    return {**element, "Value": kept}


def checked(attrs, repairs: list) -> dict:
    """`attrs` with every attribute the mapping reads in the shape PS3.18 F.2 gives it.

    An archive's answer (or a file's header) may hold anything: an element that is not an
    object, a VR that does not fit the tag (a US value in a DA), values of the wrong JSON
    type, control characters, values far longer or more numerous than any real header's.
    What cannot be read as the tag's VR is left out, oversized values and sequences are cut
    (`MAX_TEXT`, `MAX_VALUES`), and `repairs` says so, naming the attribute, never quoting a
    value. Returns `attrs` itself when nothing needed fixing.
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


def shown(value, limit: int = 64) -> str:
    """A value quoted for a repair note (repr, so control characters show), at most `limit`
    characters of it."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + "..."
    return repr(value)


# --- plain values ------------------------------------------------------------------------


def raw_values(attrs: dict, tag: str) -> list:
    """The Value list of an attribute ([] when absent or empty)."""
    element = attrs.get(tag)
    if not element:
        return []
    return element.get("Value") or []


def _as_text(value) -> str | None:
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


def clean_text(value: str | None, label: str, repairs: list | None) -> str | None:
    """A DICOM string made a valid FHIR string: no control characters, at most MAX_TEXT."""
    if value is None:
        return None
    if _CONTROL.search(value):
        value = _CONTROL.sub("", value).strip()
        if repairs is not None:
            repairs.append(f"{label} had control characters; removed")
        if not value:
            return None
    if len(value) > MAX_TEXT:
        value = value[:MAX_TEXT].rstrip()
        if repairs is not None:
            repairs.append(f"{label} is longer than {MAX_TEXT} characters; truncated")
    return value


def text(attrs: dict, tag: str, label: str, repairs: list | None) -> str | None:
    """First value as a clean FHIR string."""
    return clean_text(first(attrs, tag), label, repairs)


def fhir_code(value: str | None) -> str | None:
    """A FHIR `code`: no leading/trailing whitespace, single inner spaces."""
    if value is None:
        return None
    value = " ".join(value.split())
    return value or None


def parse_int(value) -> int | None:
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


_UNSIGNED_MAX = 2**31 - 1


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


def pn_groups(value) -> tuple[str, str, str]:
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


def pn_display(value) -> str | None:
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


# --- dates and times ---------------------------------------------------------------------

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


def parse_da_with(value: str | None, formats=()) -> tuple[date | None, str | None]:
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


_DT = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?([+-]\d{4})?")


def parse_dt(value: str | None):
    """DT "YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]" as (date, time tuple or None, offset minutes
    or None), or None. A DT with only year or year and month is not a full date: None."""
    if not value:
        return None
    match = _DT.fullmatch(value.strip())
    if match is None or match[3] is None:
        return None
    day = parse_da(match[1] + match[2] + match[3])
    if day is None:
        return None
    clock = parse_tm(match[4]) if match[4] else None
    if match[4] and clock is None:
        return None
    offset = parse_offset(match[5]) if match[5] else None
    if match[5] and offset is None:
        return None
    return day, clock, offset


@cache
def zone(name: str) -> ZoneInfo:
    """The IANA zone (cached); MappingError if the configured zone does not exist."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise MappingError(f"time zone {name!r} is unknown") from exc


def local_offset(day: date, clock: tuple[int, int, int, str], zone_name: str) -> int:
    """UTC offset in minutes of a local wall-clock time in the zone (DST-aware; for a time
    repeated or skipped by a DST change, the offset before the change)."""
    hour, minute, second, _ = clock
    wall = datetime(day.year, day.month, day.day, hour, minute, min(second, 59),
                    tzinfo=zone(zone_name))
    delta = wall.utcoffset() or timedelta(0)
    return int(delta.total_seconds() // 60)


def format_offset(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def format_datetime(day: date, clock: tuple[int, int, int, str] | None,
                    offset: int | None) -> str:
    """FHIR dateTime: "YYYY-MM-DD" or "YYYY-MM-DDThh:mm:ss[.f]+zz:zz" (a time always has a
    zone in FHIR)."""
    if clock is None:
        return day.isoformat()
    hour, minute, second, fraction = clock
    out = f"{day.isoformat()}T{hour:02d}:{minute:02d}:{second:02d}"
    if fraction:
        out += "." + fraction
    return out + format_offset(offset or 0)


def fhir_datetime(
    date_value: str | None,
    time_value: str | None,
    offset_value: str | None,
    zone_name: str,
    labels: tuple[str, str],
    target: str,
    repairs: list | None,
    date_formats=(),
) -> str | None:
    """FHIR dateTime from DICOM DA + TM + TimezoneOffsetFromUTC.

    Without a valid offset the archive's configured zone gives it (DICOM times are local);
    never "Z" by default. No time gives a date-only value; an invalid date leaves the
    element out, an invalid time keeps the date. `labels` name the DA and TM attributes
    and `target` the FHIR element, for the repair notes. `date_formats` are a mapping
    profile's extra date formats, tried on a date that is not a valid DA.
    """
    if date_value is None:
        return None
    day, pattern = parse_da_with(date_value, date_formats)
    if pattern is not None and repairs is not None:
        repairs.append(f"{labels[0]} {date_value!r} is not a valid DA; read as {pattern} "
                       "(mapping profile dates.formats)")
    if day is None:
        if repairs is not None:
            repairs.append(f"{labels[0]} {date_value!r} is not a valid DA; {target} left out")
        return None
    if time_value is None:
        return day.isoformat()
    clock = parse_tm(time_value)
    if clock is None:
        if repairs is not None:
            repairs.append(
                f"{labels[1]} {time_value!r} is not a valid TM; {target} kept as a date only")
        return day.isoformat()
    offset = parse_offset(offset_value)
    if offset is None:
        if offset_value is not None and repairs is not None:
            repairs.append(
                f"TimezoneOffsetFromUTC {offset_value!r} is not valid; "
                f"{target} uses the source time zone {zone_name}")
        offset = local_offset(day, clock, zone_name)
    return format_datetime(day, clock, offset)


# --- issuers (HL7 v2 HD: namespace / universal id / universal id type) -------------------


def universal_entity_system(entity_id: str | None, entity_type: str | None, label: str,
                            repairs: list | None) -> str | None:
    """Identifier.system from Universal Entity ID (0040,0032) and its type (0040,0033):
    ISO -> urn:oid:<oid>, URI/URL -> the URI itself, UUID -> urn:uuid:<uuid>; other types
    (DNS, EUI64, X400, X500) have no URI form and give None."""
    if not entity_id:
        return None
    kind = (entity_type or "").upper()
    problem = None
    if kind == "ISO":
        oid = entity_id[8:] if entity_id.lower().startswith("urn:oid:") else entity_id
        if codes.OID_RE.fullmatch(oid):
            return "urn:oid:" + oid
        problem = "Universal Entity ID of type ISO is not an OID"
    elif kind in ("URI", "URL"):
        if ":" in entity_id and not any(c.isspace() for c in entity_id):
            return entity_id
        problem = f"Universal Entity ID of type {kind} is not a URI"
    elif kind == "UUID":
        return "urn:uuid:" + entity_id.lower()
    else:
        problem = f"Universal Entity ID type {entity_type!r} has no URI form"
    if repairs is not None:
        repairs.append(f"{label}: {problem}; ignored")
    return None


# --- coded entries -----------------------------------------------------------------------


def coding_from_item(item: dict, label: str, repairs: list | None) -> dict | None:
    """FHIR Coding from one code sequence item (PS3.3 8.8, Basic Code Sequence Macro).

    Code Value, else Long Code Value, else URN Code Value (a URN is its own system,
    urn:ietf:rfc:3986). An unknown coding scheme keeps code and display without `system`.
    """
    meaning = clean_text(first(item, tags.CODE_MEANING), label, repairs)
    designator = first(item, tags.CODING_SCHEME_DESIGNATOR)
    code = fhir_code(first(item, tags.CODE_VALUE) or first(item, tags.LONG_CODE_VALUE))
    if code is not None:
        system, code = codes.coding_system_and_code(designator, code)
        if system is None and designator and repairs is not None:
            repairs.append(f"{label}: coding scheme {designator!r} has no known URI; "
                           "system left out")
    else:
        urn = fhir_code(first(item, tags.URN_CODE_VALUE))
        if urn is None:
            if meaning is None:
                return None
            return {"display": meaning}
        system, code = codes.RFC3986, urn
    coding: dict = {}
    if system:
        coding["system"] = system
        version = fhir_code(first(item, tags.CODING_SCHEME_VERSION))
        if version:
            coding["version"] = version
    coding["code"] = code
    if meaning:
        coding["display"] = meaning
    return coding


def codeable_concepts(attrs: dict, tag: str, label: str, repairs: list | None) -> list[dict]:
    """One CodeableConcept per code sequence item, text = the code meaning."""
    out: list[dict] = []
    for item in items(attrs, tag):
        coding = coding_from_item(item, label, repairs)
        if coding is None:
            continue
        concept: dict = {}
        if "code" in coding:
            concept["coding"] = [coding]
        if coding.get("display"):
            concept["text"] = coding["display"]
        if concept and concept not in out:
            out.append(concept)
    return out
