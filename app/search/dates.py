"""FHIR date, dateTime and instant values as half-open ranges of epoch microseconds.

A FHIR date stands for the whole interval its precision covers (`2013-01-14` is that whole
day), so both stored values and search values are ranges [low, high) and every search
prefix is a comparison of two ranges (FHIR R4 search, 3.1.1.5.9). Values without a zone
are read in the server's configured zone.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

#: digits are ASCII (`\d` would take any Unicode digit); the zone offset is one the FHIR R4
#: dateTime pattern allows, -14:00 to +14:00 (and so always less than the 24 h a timezone holds)
_DATE = re.compile(
    r"(?P<y>[0-9]{4})(?:-(?P<m>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<H>[0-9]{2}):(?P<M>[0-9]{2})(?::(?P<S>[0-9]{2})(?:\.(?P<f>[0-9]{1,9}))?)?"
    r"(?P<tz>Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00))?)?)?)?"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: 10000-01-01T00:00:00Z: where the range of a value at the end of year 9999 ends
_END_OF_TIME = 253402300800 * 1_000_000


class DateFormatError(ValueError):
    pass


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _micros(dt: datetime) -> int:
    delta = dt - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _add_months(year: int, month: int, n: int) -> tuple[int, int]:
    month0 = month - 1 + n
    return year + month0 // 12, month0 % 12 + 1


def date_range(value: str, default_zone: str = "UTC") -> tuple[int, int]:
    """Return [low, high) in epoch microseconds for a FHIR date/dateTime/instant string."""
    match = _DATE.fullmatch(value or "")  # fullmatch: `$` would let a trailing newline through
    if not match:
        raise DateFormatError(f"{value!r} is not a FHIR date or dateTime")
    g = match.groupdict()
    tz = g["tz"]
    zone: tzinfo
    if tz == "Z":
        zone = UTC
    elif tz:
        sign = 1 if tz[0] == "+" else -1
        zone = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
    else:
        zone = _zone(default_zone)
    high = None
    try:
        year = int(g["y"])
        if g["m"] is None:
            low = datetime(year, 1, 1, tzinfo=zone)
            high = datetime(year + 1, 1, 1, tzinfo=zone) if year < 9999 else None
        elif g["d"] is None:
            month = int(g["m"])
            low = datetime(year, month, 1, tzinfo=zone)
            ny, nm = _add_months(year, month, 1)
            high = datetime(ny, nm, 1, tzinfo=zone) if ny <= 9999 else None
        else:
            month, day = int(g["m"]), int(g["d"])
            if g["H"] is None:
                low = datetime(year, month, day, tzinfo=zone)
                high = low + timedelta(days=1)
            else:
                hour, minute = int(g["H"]), int(g["M"])
                if g["S"] is None:
                    low = datetime(year, month, day, hour, minute, tzinfo=zone)
                    high = low + timedelta(minutes=1)
                else:
                    second = int(g["S"])
                    frac = g["f"] or ""
                    micro = int((frac + "000000")[:6]) if frac else 0
                    low = datetime(year, month, day, hour, minute, second, micro, tzinfo=zone)
                    step = 10 ** (6 - min(len(frac), 6)) if frac else 1_000_000
                    high = low + timedelta(microseconds=step)
    except OverflowError:
        pass  # the range ends after year 9999: high stays None (end of time)
    except ValueError as exc:
        raise DateFormatError(f"{value!r} is not a valid date: {exc}") from exc
    # aware datetime + timedelta is wall-clock arithmetic, so a local day across a DST
    # change is still one calendar day
    return _micros(low), (_END_OF_TIME if high is None else _micros(high))
