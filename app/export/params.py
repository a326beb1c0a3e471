"""The kick-off request of a Bulk Data export, checked before any job exists (Bulk Data Access
IG v2.0.0, "Bulk Data Kick-off Request"): a parameter this server does not support, or a value
it cannot honour, is a 400 naming it, never a job that silently exports something else.

- `_outputFormat`: ndjson only, as `application/fhir+ndjson`, `application/ndjson` or `ndjson`;
- `_since`: a FHIR instant; resources whose `meta.lastUpdated` is later are exported;
- `_type`: comma-separated types, repeatable; without it every served type the client may read;
- `_typeFilter`: FHIR search queries (`ImagingStudy?modality=MR`), repeatable and comma-separated;
  queries of one type are ORed, and a type with queries exports what one of them matches. Search
  result parameters (`_include`, `_sort`, `_count`…) are refused, as the IG says they SHALL NOT be used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import parse_qsl

from app.search.params import RESOURCE_TYPES
from app.search.query import SearchError, SearchQuery, parse_search

NDJSON_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
SUPPORTED = ("_outputFormat", "_since", "_type", "_typeFilter")
#: FHIR R4 instant: seconds at least, and a zone
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
#: where one query of `_typeFilter` starts: a resource type and `?`
_QUERY_START = re.compile(r",(?=[A-Z][A-Za-z]*\?)")


class KickoffError(Exception):
    """A kick-off parameter refused: 400 with an OperationOutcome that names it."""

    def __init__(self, diagnostics: str, code: str = "invalid"):
        super().__init__(diagnostics)
        self.code = code
        self.diagnostics = diagnostics


@dataclass
class ExportRequest:
    """What one kick-off asks for, as the job keeps it (JSON)."""

    #: "system" ($export), "patient" (Patient/$export) or "group" (Group/[id]/$export)
    kind: str
    group: str | None = None
    #: the types `_type` named, in order; None: not given
    types: list[str] | None = None
    #: `_since` as sent, and as epoch microseconds
    since: str | None = None
    since_micros: int | None = None
    #: `_typeFilter` queries by type: each a list of (name, value) search parameters
    filters: dict[str, list[list[tuple[str, str]]]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "group": self.group,
            "types": self.types,
            "since": self.since,
            "since_micros": self.since_micros,
            "filters": {t: [[list(p) for p in q] for q in qs] for t, qs in self.filters.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> ExportRequest:
        filters = {t: [[(p[0], p[1]) for p in q] for q in qs] for t, qs in data["filters"].items()}
        return cls(data["kind"], data["group"], data["types"], data["since"], data["since_micros"], filters)


def _values(items: list[tuple[str, str]], name: str) -> list[str]:
    """Values of a parameter that may repeat and hold comma-separated values (IG: treated alike)."""
    return [part.strip() for key, value in items if key == name for part in value.split(",") if part.strip()]


def _instant(value: str) -> int:
    if not _INSTANT.match(value):
        raise KickoffError(f"parameter '_since': {value[:64]!r} is not a FHIR instant (e.g. 2024-01-31T12:00:00Z)")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise KickoffError(f"parameter '_since': {value[:64]!r} is not a valid instant") from None
    return int(moment.timestamp() * 1_000_000)


def filter_query(rtype: str, items: list[tuple[str, str]], zone: str, base_url: str) -> SearchQuery:
    """The SearchQuery of one `_typeFilter` query (also how the job reads it); KickoffError when
    it is not a filter this server can run."""
    try:
        query = parse_search(rtype, items, zone=zone, base_url=base_url, default_count=1, max_count=1, strict=True)
    except SearchError as err:
        raise KickoffError(f"parameter '_typeFilter': {rtype}?…: {err.diagnostics}") from None
    if len(query.clauses) != len(items):
        names = ", ".join(sorted({name for name, _ in items if name.split(":")[0].startswith("_")}))
        raise KickoffError(
            f"parameter '_typeFilter': search result parameters ({names or 'unknown'}) may not be used in a "
            "_typeFilter query (Bulk Data Access IG)"
        )
    return query


def _filters(raw: list[str], zone: str, base_url: str) -> dict[str, list[list[tuple[str, str]]]]:
    found: dict[str, list[list[tuple[str, str]]]] = {}
    for value in raw:
        for piece in _QUERY_START.split(value):
            rtype, mark, query = piece.strip().partition("?")
            if not mark or rtype not in RESOURCE_TYPES:
                raise KickoffError(
                    f"parameter '_typeFilter': {piece[:80]!r} is not a query on a type served here "
                    f"({', '.join(RESOURCE_TYPES)}), such as ImagingStudy?modality=MR"
                )
            items = parse_qsl(query, keep_blank_values=True)
            if not items:
                raise KickoffError(f"parameter '_typeFilter': {piece[:80]!r} has no search parameters")
            filter_query(rtype, items, zone, base_url)
            found.setdefault(rtype, []).append(items)
    return found


def parse_kickoff(
    kind: str, group: str | None, items: list[tuple[str, str]], zone: str, base_url: str, lenient: bool
) -> ExportRequest:
    """Check every parameter of a kick-off; KickoffError names the first one refused.
    `lenient` (`Prefer: handling=lenient`): parameters this server does not know are ignored."""
    unknown = sorted({name for name, _ in items if name not in SUPPORTED})
    if unknown and not lenient:
        raise KickoffError(
            f"unsupported parameter(s) for $export: {', '.join(repr(n[:64]) for n in unknown)} "
            f"(supported: {', '.join(SUPPORTED)}); send 'Prefer: handling=lenient' to have unknown ones ignored",
            code="not-supported",
        )
    formats = [value for name, value in items if name == "_outputFormat"]
    if len(formats) > 1:
        raise KickoffError("parameter '_outputFormat': given more than once")
    if formats and formats[0] not in NDJSON_FORMATS:
        raise KickoffError(
            f"parameter '_outputFormat': {formats[0][:64]!r} is not supported "
            f"(only ndjson: {', '.join(NDJSON_FORMATS)})",
            code="not-supported",
        )
    request = ExportRequest(kind, group)
    since = [value for name, value in items if name == "_since"]
    if len(since) > 1:
        raise KickoffError("parameter '_since': given more than once")
    if since:
        request.since, request.since_micros = since[0], _instant(since[0])
    if any(name == "_type" for name, _ in items):
        types = list(dict.fromkeys(_values(items, "_type")))
        wrong = [t for t in types if t not in RESOURCE_TYPES]
        if wrong or not types:
            raise KickoffError(
                f"parameter '_type': {', '.join(repr(t[:64]) for t in wrong) or 'no type'} is not a type served here "
                f"(served: {', '.join(RESOURCE_TYPES)})",
                code="not-supported",
            )
        request.types = types
    request.filters = _filters([value for name, value in items if name == "_typeFilter"], zone, base_url)
    outside = sorted(set(request.filters) - set(request.types or RESOURCE_TYPES))
    if outside:
        raise KickoffError(f"parameter '_typeFilter': a query on {', '.join(outside)}, which _type does not name")
    return request
