"""FHIR REST interactions: one small handler each, answered from stored JSON bytes."""
from __future__ import annotations

import re
from email.utils import format_datetime, parsedate_to_datetime
from datetime import datetime, timezone

import orjson
from flask import Blueprint, Response, current_app, g, request

from app.fhir.bundle import history, match_bundle, search_url, searchset, subset
from app.fhir.capability import capability_statement
from app.fhir.errors import FHIR_JSON, FhirError
from app.fhir.paging import PageTokens, search_digest
from app.ids import valid_id
from app.sync.ondemand import OnDemand
from app.security.discovery import rest_security
from app.clock import micros_to_instant
from app.search.params import RESOURCE_TYPES
from app.search.query import SearchError, parse_search
from app.security import scope
from app.store.audit_log import AuditLog
from app.store.reader import Reader
from app.store.resources import read_current, read_deleted, read_history, read_version
from app.store.search_sql import run_search

bp = Blueprint("fhir", __name__)
JSON_FORMATS = {"json", "application/json", "application/fhir+json"}


def _state():
    return current_app.extensions["imaging-facade"]


def _check_type(rtype: str) -> None:
    if rtype not in RESOURCE_TYPES:
        raise FhirError(404, "not-supported", f"resource type '{rtype}' is not served here "
                                              f"(served: {', '.join(RESOURCE_TYPES)})")


def _check_id(rtype: str, rid: str) -> None:
    """Anything that is not a valid FHIR id cannot be stored here: 404 without a query."""
    if not valid_id(rid):
        raise FhirError(404, "not-found", f"{rtype}/{rid[:64]} is not known (not a valid FHIR id)")


def check_format() -> None:
    fmt = request.args.get("_format")
    # an unencoded "+" arrives as a space: application/fhir+json is meant
    if fmt is not None and fmt.split(";")[0].strip().replace(" ", "+") not in JSON_FORMATS:
        raise FhirError(406, "not-supported", f"parameter '_format': {fmt!r} is not supported; this server speaks JSON")


def _json(body: bytes, status: int = 200, headers: dict | None = None) -> Response:
    return Response(body, status=status, headers=headers, content_type=FHIR_JSON)


@bp.before_request
def _negotiate():
    check_format()


@bp.get("/metadata")
def metadata():
    state = _state()
    return _json(state.capability)


def _http_date(micros: int) -> str:
    return format_datetime(datetime.fromtimestamp(micros // 1_000_000, tz=timezone.utc), usegmt=True)


def _not_modified(etag: str, micros: int) -> bool:
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None:
        return etag in [tag.strip() for tag in if_none_match.split(",")] or if_none_match.strip() == "*"
    since = request.headers.get("If-Modified-Since")
    if since:
        try:
            return micros // 1_000_000 <= int(parsedate_to_datetime(since).timestamp())
        except (TypeError, ValueError):
            return False
    return False


_SUBSETTING = ("_summary", "_elements")


def _subsetting(rtype: str):
    """`_summary` / `_elements` on a read: the (summary, elements) asked for, or 400."""
    items = [(k, v) for k, v in request.args.items(multi=True) if k in _SUBSETTING]
    if not items:
        return "false", None
    try:
        query = _parse(rtype, items)
    except SearchError as err:
        raise FhirError(400, err.code, err.diagnostics) from None
    if query.summary == "count":
        raise FhirError(400, "invalid", "parameter '_summary': count applies to searches, not reads")
    return query.summary, query.elements


def _resource_response(rtype: str, rid: str, version: int, micros: int, content: bytes) -> Response:
    summary, elements = _subsetting(rtype)
    etag = f'W/"{version}"'
    headers = {"ETag": etag, "Last-Modified": _http_date(micros)}
    if _not_modified(etag, micros):
        return Response(status=304, headers=headers)
    return _json(subset(content, summary, elements), headers=headers)


@bp.get("/<rtype>/<rid>")
def read(rtype: str, rid: str):
    _check_type(rtype)
    _check_id(rtype, rid)
    scope.guard_read(rtype, rid)
    found = read_current(_state().reader, rtype, rid)
    if found is None:
        gone = read_deleted(_state().reader, rtype, rid)
        if gone is not None:
            raise FhirError(410, "deleted", f"{rtype}/{rid} was deleted at {micros_to_instant(gone[1])}: no archive "
                                            "holds it any more", headers={"ETag": f'W/"{gone[0]}"'})
        raise FhirError(404, "not-found", f"{rtype}/{rid} is not known")
    version, micros, content = found
    g.returned, g.contents = [(rtype, rid)], {rid: content}
    return _resource_response(rtype, rid, version, micros, content)


@bp.get("/<rtype>/<rid>/_history/<vid>")
def vread(rtype: str, rid: str, vid: str):
    _check_type(rtype)
    _check_id(rtype, rid)
    if not vid.isdigit() or len(vid) > 9:
        raise FhirError(404, "not-found", f"{rtype}/{rid} has no version {vid!r}")
    scope.guard_read(rtype, rid)
    row = read_version(_state().reader, rtype, rid, int(vid))
    if row is None or not scope.version_visible(rtype, row[1]):
        raise FhirError(404, "not-found", f"{rtype}/{rid} has no version {vid}")
    g.returned = [(rtype, rid)]
    return _resource_response(rtype, rid, int(vid), row[0], row[1])


@bp.get("/<rtype>/<rid>/_history")
def history_instance(rtype: str, rid: str):
    _check_type(rtype)
    _check_id(rtype, rid)
    scope.guard_read(rtype, rid)
    versions = [v for v in read_history(_state().reader, rtype, rid) if scope.version_visible(rtype, v[2])]
    if not versions:
        raise FhirError(404, "not-found", f"{rtype}/{rid} is not known")
    state = _state()
    g.returned = [(rtype, rid)]
    return _json(history(state.base_url, rtype, rid, versions, f"{state.base_url}/{rtype}/{rid}/_history"))


@bp.get("/<rtype>")
def search_get(rtype: str):
    _check_type(rtype)
    return _search(rtype, list(request.args.items(multi=True)))


@bp.post("/<rtype>/_search")
def search_post(rtype: str):
    _check_type(rtype)
    if request.mimetype != "application/x-www-form-urlencoded":
        raise FhirError(415, "not-supported", "POST _search takes an application/x-www-form-urlencoded body")
    items = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
    return _search(rtype, items)


def _strict() -> bool:
    prefer = request.headers.get("Prefer", "")
    return "handling=strict" in (part.strip() for part in re.split(r"[;,]", prefer))


def _parse(rtype: str, items: list[tuple[str, str]]):
    state = _state()
    return parse_search(
        rtype, items, zone=state.config.timezone, base_url=state.base_url,
        default_count=state.config.server.default_count, max_count=state.config.server.max_count,
        strict=_strict(),
    )


def _search(rtype: str, items: list[tuple[str, str]]) -> Response:
    state = _state()
    try:
        query = _parse(rtype, items)
        scope.guard_search(rtype, query)
        digest = search_digest(rtype, query.applied, scope.binding())
        cursor = state.page_tokens.read(digest, query.page) if query.page is not None else None
    except SearchError as err:
        raise FhirError(400, err.code, err.diagnostics) from None
    if cursor is None:
        state.on_demand.before_search(query, scope.fetchable_identifiers())
    result = run_search(state.reader, query, cursor)
    g.returned = [(rtype, rid) for rid, _ in result.matches] + [(t, i) for t, i, _ in result.includes]
    # the audit reads the patients of the studies served off their JSON
    g.contents = dict(result.matches) if rtype == "ImagingStudy" else {}
    g.contents.update((rid, content) for t, rid, content in result.includes if t == "ImagingStudy")
    self_params = list(query.applied) + ([("_page", query.page)] if query.page is not None else [])
    next_url = None
    if result.has_more and result.matches:
        token = state.page_tokens.make(digest, result.cursor)
        next_url = search_url(state.base_url, rtype, list(query.applied) + [("_page", token)])
    return _json(searchset(state.base_url, rtype, result, search_url(state.base_url, rtype, self_params), next_url,
                           query.summary, query.elements))


@bp.post("/Patient/$match")
def patient_match():
    """FHIR MPI `$match`: a Parameters with a Patient in, a searchset of scored Patients out."""
    from app.identity.match import MATCH_GRADE, MatchInputError, match, parse_parameters

    if request.mimetype not in ("application/fhir+json", "application/json"):
        raise FhirError(415, "not-supported", "POST Patient/$match takes a JSON Parameters resource")
    state = _state()
    try:
        patient, only_certain, count = parse_parameters(orjson.loads(request.get_data() or b"null"))
    except orjson.JSONDecodeError:
        raise FhirError(400, "invalid", "the body is not valid JSON") from None
    except MatchInputError as err:
        raise FhirError(400, "invalid", str(err)) from None
    count = min(count or state.config.server.default_count, state.config.server.max_count)
    with state.store.engine.connect() as conn:
        found = match(conn, patient, state.config.identity, only_certain, count)
    entries = []
    for rid, score, grade, _ in found:
        current = read_current(state.reader, "Patient", rid)
        if current is None:
            continue
        entries.append({"fullUrl": f"{state.base_url}/Patient/{rid}", "resource": orjson.Fragment(current[2]),
                        "search": {"extension": [{"url": MATCH_GRADE, "valueCode": grade}],
                                   "mode": "match", "score": round(score, 4)}})
    return _json(match_bundle(entries, f"{state.base_url}/Patient/$match"))


class ApiState:
    """What the handlers share: built once per process, never per request."""

    def __init__(self, config, store):
        self.config = config
        self.store = store
        self.reader = Reader(store.url)
        self.audit_log = AuditLog(store.url, config.security.audit_spool)
        self.base_url = config.server.base_url
        self.on_demand = OnDemand(config, store, lambda rtype, rid: read_current(self.reader, rtype, rid))
        self.page_tokens = PageTokens(config.server.secret or store.settings.paging_secret(), config.server.page_ttl)
        released = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.capability = orjson.dumps(capability_statement(self.base_url, released, rest_security(config.security)))
