"""FHIR R4 date and dateTime values from DICOM dates, times and time zone offsets.

A FHIR dateTime with a time must carry a zone, while DICOM times are the archive's local
wall-clock time: the zone comes from TimezoneOffsetFromUTC (0008,0201) when the study has a
valid one, else from the source's configured IANA zone, never "Z" by default.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.mapping.errors import MappingError
from app.mapping.vr import parse_da_with, parse_offset, parse_tm


def fhir_datetime(
    date_value: str | None,
    time_value: str | None,
    offset_value: str | None,
    zone_name: str,
    labels: tuple[str, str],
    target: str,
    repairs: list | None,
    date_formats: tuple | list = (),
) -> str | None:
    """FHIR dateTime from DICOM DA + TM + TimezoneOffsetFromUTC.

    No time gives a date-only value; an invalid date leaves the element out, an invalid time
    keeps the date. `labels` name the DA and TM attributes and `target` the FHIR element, for
    the repair notes. `date_formats` are a mapping profile's extra date formats, tried on a
    date that is not a valid DA.
    """
    day = _day(date_value, labels[0], target, repairs, date_formats)
    if day is None:
        return None
    if time_value is None:
        return day.isoformat()
    clock = parse_tm(time_value)
    if clock is None:
        if repairs is not None:
            repairs.append(f"{labels[1]} {time_value!r} is not a valid TM; {target} kept as a date only")
        return day.isoformat()
    offset = parse_offset(offset_value)
    if offset is None:
        if offset_value is not None and repairs is not None:
            repairs.append(
                f"TimezoneOffsetFromUTC {offset_value!r} is not valid; {target} uses the source time zone {zone_name}"
            )
        offset = local_offset(day, clock, zone_name)
    return format_datetime(day, clock, offset)


def _day(value: str | None, label: str, target: str, repairs: list | None, formats: tuple | list) -> date | None:
    """The date of a DA, read with the profile's extra formats if it must be; noted if so."""
    if value is None:
        return None
    day, pattern = parse_da_with(value, formats)
    if pattern is not None and repairs is not None:
        repairs.append(f"{label} {value!r} is not a valid DA; read as {pattern} (mapping profile dates.formats)")
    if day is None and repairs is not None:
        repairs.append(f"{label} {value!r} is not a valid DA; {target} left out")
    return day


def format_datetime(day: date, clock: tuple[int, int, int, str] | None, offset: int | None) -> str:
    """FHIR dateTime: "YYYY-MM-DD" or "YYYY-MM-DDThh:mm:ss[.f]+zz:zz" (a time always has a
    zone in FHIR)."""
    if clock is None:
        return day.isoformat()
    hour, minute, second, fraction = clock
    out = f"{day.isoformat()}T{hour:02d}:{minute:02d}:{second:02d}"
    if fraction:
        out += "." + fraction
    return out + format_offset(offset or 0)


def format_offset(minutes: int) -> str:
    """A UTC offset in minutes as FHIR writes it: "+02:00", "-05:30"."""
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def local_offset(day: date, clock: tuple[int, int, int, str], zone_name: str) -> int:
    """UTC offset in minutes of a local wall-clock time in the zone (DST-aware; for a time
    repeated or skipped by a DST change, the offset before the change)."""
    hour, minute, second, _ = clock
    wall = datetime(day.year, day.month, day.day, hour, minute, min(second, 59), tzinfo=zone(zone_name))
    delta = wall.utcoffset() or timedelta(0)
    return int(delta.total_seconds() // 60)


@cache
def zone(name: str) -> ZoneInfo:
    """The IANA zone (cached); MappingError if the configured zone does not exist."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise MappingError(f"time zone {name!r} is unknown") from exc
