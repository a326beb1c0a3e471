"""The parameters of a history request (FHIR R4 http 3.1.0.12): `_since`, `_at`, `_count` and
the paging token `_page`, each checked before the store is asked: a bad value is a 400 naming
its parameter.

`_since` is an instant, `_at` a dateTime standing for the period its precision covers; both
are read as search dates (app/search/dates.py: a value without a zone is in the server's
zone). `_count` is capped at server.max_count like a search's. Under `Prefer: handling=strict`
any other parameter is refused, as for a search; otherwise it is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from app.search.dates import date_range
from app.search.query import SearchError

#: what a history request takes beyond its own parameters: the general ones (FHIR R4 http 3.1.0.1.10)
GENERAL = frozenset({"_format", "_pretty"})
_COUNT = re.compile(r"[0-9]{1,9}")


@dataclass
class HistoryQuery:
    count: int
    since: int | None = None
    at: tuple[int, int] | None = None
    page: str | None = None
    #: the parameters applied, in order, as the paging links repeat them
    applied: list[tuple[str, str]] = field(default_factory=list)


def _instant(name: str, value: str, zone: str) -> tuple[int, int]:
    try:
        return date_range(value, zone)
    except (ValueError, OverflowError):  # DateFormatError is a ValueError; so is a zone offset of 24 h or more
        raise SearchError("invalid", f"parameter '{name}': {value[:64]!r} is not a FHIR instant or dateTime") from None


def parse_history(
    items: list[tuple[str, str]], *, zone: str, default_count: int, max_count: int, strict: bool
) -> HistoryQuery:
    query = HistoryQuery(count=default_count)
    seen: set[str] = set()
    for name, value in items:
        if name in GENERAL:
            continue
        if name not in ("_since", "_at", "_count", "_page"):
            if strict:
                raise SearchError("not-supported", f"parameter '{name[:64]}' is not supported by history")
            continue
        if name in seen:
            raise SearchError("invalid", f"parameter '{name}' is given more than once")
        seen.add(name)
        if name == "_page":
            query.page = value
            continue
        if name == "_count":
            if not _COUNT.fullmatch(value):
                raise SearchError("invalid", f"parameter '_count': {value[:64]!r} is not a non-negative integer")
            query.count = min(int(value), max_count)
            value = str(query.count)
        elif name == "_since":
            query.since = _instant(name, value, zone)[0]
        else:
            query.at = _instant(name, value, zone)
        query.applied.append((name, value))
    return query
