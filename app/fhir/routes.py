"""FHIR REST interactions: one small handler each, answered from stored JSON bytes.

Each handler declares the interaction it serves (app/api/interactions.py), asks the request
path's hooks before it reads (the Guard: what the request may see; before-search hooks:
on-demand fetching, the audit trail's own spool) and notes what it served for the audit
hook. It never imports security or sync: they plug into the hooks (app/api/hooks.py).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

import orjson
from flask import Blueprint, Flask, Response, g, request

from app.api.hooks import note_served
from app.api.interactions import CAPABILITIES, PATIENT_MATCH, READ, SEARCH_TYPE, VREAD, serves
from app.api.outcome import FHIR_JSON
from app.api.state import ApiState, current_state
from app.clock import micros_to_instant
from app.errors import FhirError
from app.fhir.bundle import match_bundle, search_url, searchset, subset
from app.fhir.formats import negotiate
from app.fhir.versions import deleted_version, version_shown
from app.ids import valid_id
from app.search.paging import search_digest
from app.search.params import RESOURCE_TYPES
from app.search.query import SearchError, SearchLimits, SearchQuery, check_pretty, parse_search
from app.store.resources import read_current, read_deleted, read_version
from app.store.search_sql import run_search

bp = Blueprint("fhir", __name__)
#: the types a search may name: the served ones, and the audit trail (AuditEvent)
SEARCHED_TYPES = (*RESOURCE_TYPES, "AuditEvent")


def _check_type(rtype: str, types: tuple[str, ...] = RESOURCE_TYPES) -> None:
    if rtype not in types:
        raise FhirError(
            404, "not-supported", f"resource type '{rtype}' is not served here (served: {', '.join(RESOURCE_TYPES)})"
        )


def _check_id(rtype: str, rid: str) -> None:
    """Anything that is not a valid FHIR id cannot be stored here: 404 without a query."""
    if not valid_id(rid):
        raise FhirError(404, "not-found", f"{rtype}/{rid[:64]} is not known (not a valid FHIR id)")


def check_format() -> None:
    """406 for a format or FHIR version not served (app/fhir/formats.py). The app's first hook
    has chosen the format of every /fhir request it let through; asked again only without it."""
    if "fhir_format" not in g:
        negotiate()


def _json(body: bytes, status: int = 200, headers: dict | None = None) -> Response:
    if _pretty():  # presentation only: the stored bytes as they are, unless asked
        body = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2)
    return Response(body, status=status, headers=headers, content_type=FHIR_JSON)


def _pretty() -> bool:
    """`_pretty` of the query string, or of a POST _search's form body."""
    value = request.args.get("_pretty")
    if value is None and request.method == "POST" and request.mimetype == "application/x-www-form-urlencoded":
        value = request.form.get("_pretty")
    try:
        return value is not None and check_pretty(value)
    except SearchError as err:
        raise FhirError(400, err.code, err.diagnostics) from None


@bp.before_request
def _negotiate() -> None:
    check_format()


@bp.get("/metadata")
@serves(CAPABILITIES)
def metadata() -> Response:
    return _json(current_state().capability)


def _http_date(micros: int) -> str:
    return format_datetime(datetime.fromtimestamp(micros // 1_000_000, tz=UTC), usegmt=True)


def _not_modified(version: int, micros: int) -> bool:
    if "If-None-Match" in request.headers:
        # RFC 9110 §13.1.2: If-None-Match compares weakly, so "1" and W/"1" both match W/"1";
        # and it wins over If-Modified-Since (§13.2.2)
        return request.if_none_match.contains_weak(str(version))
    since = request.headers.get("If-Modified-Since")
    if since:
        try:
            return micros // 1_000_000 <= int(parsedate_to_datetime(since).timestamp())
        except (TypeError, ValueError):
            return False
    return False


_SUBSETTING = ("_summary", "_elements")


def _subsetting(rtype: str) -> tuple[str, frozenset[str] | None]:
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
    if _not_modified(version, micros):
        return Response(status=304, headers=headers)
    return _json(subset(content, summary, elements), headers=headers)


@bp.get("/<rtype>/<rid>")
@serves(READ)
def read(rtype: str, rid: str) -> Response:
    _check_type(rtype)
    _check_id(rtype, rid)
    state = current_state()
    state.hooks.guard.before_read(rtype, rid)
    found = read_current(state.reader, rtype, rid)
    if found is None:
        gone = read_deleted(state.reader, rtype, rid)
        if gone is not None:
            raise FhirError(
                410,
                "deleted",
                f"{rtype}/{rid} was deleted at {micros_to_instant(gone[1])}: no archive holds it any more",
                headers={"ETag": f'W/"{gone[0]}"'},
            )
        raise FhirError(404, "not-found", f"{rtype}/{rid} is not known")
    version, micros, content = found
    content = state.hooks.guard.shown(rtype, content)
    note_served([(rtype, rid)], {rid: content})
    return _resource_response(rtype, rid, version, micros, content)


@bp.get("/<rtype>/<rid>/_history/<vid>")
@serves(VREAD)
def vread(rtype: str, rid: str, vid: str) -> Response:
    _check_type(rtype)
    _check_id(rtype, rid)
    if not (vid.isascii() and vid.isdigit()) or len(vid) > 9:  # isdigit() alone takes "²"
        raise FhirError(404, "not-found", f"{rtype}/{rid} has no version {vid!r}")
    state = current_state()
    state.hooks.guard.before_read(rtype, rid)
    row = read_version(state.reader, rtype, rid, int(vid))
    if row is None or not version_shown(state.hooks.guard, state.reader, rtype, rid, int(vid), row[1]):
        raise FhirError(404, "not-found", f"{rtype}/{rid} has no version {vid}")
    if not row[1]:
        raise deleted_version(rtype, rid, int(vid), row[0])
    note_served([(rtype, rid)])
    return _resource_response(rtype, rid, int(vid), row[0], state.hooks.guard.shown(rtype, row[1]))


@bp.get("/<rtype>")
@serves(SEARCH_TYPE)
def search_get(rtype: str) -> Response:
    _check_type(rtype, SEARCHED_TYPES)
    return _search(rtype, list(request.args.items(multi=True)))


@bp.post("/<rtype>/_search")
@serves(SEARCH_TYPE)
def search_post(rtype: str) -> Response:
    _check_type(rtype, SEARCHED_TYPES)
    if request.mimetype != "application/x-www-form-urlencoded":
        raise FhirError(415, "not-supported", "POST _search takes an application/x-www-form-urlencoded body")
    items = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
    return _search(rtype, items)


def _strict() -> bool:
    prefer = request.headers.get("Prefer", "")
    return "handling=strict" in (part.strip() for part in re.split(r"[;,]", prefer))


def _parse(rtype: str, items: list[tuple[str, str]]) -> SearchQuery:
    state = current_state()
    server = state.config.server
    return parse_search(
        rtype,
        items,
        zone=state.config.timezone,
        base_url=state.base_url,
        default_count=server.default_count,
        max_count=server.max_count,
        strict=_strict(),
        limits=SearchLimits(server.max_chain_depth, server.max_chains, server.max_includes),
    )


def _search(rtype: str, items: list[tuple[str, str]]) -> Response:
    state = current_state()
    guard = state.hooks.guard
    guard.before_search(rtype)
    try:
        query = _parse(rtype, items)
        guard.restrict(query)
        digest = search_digest(rtype, query.applied, guard.binding())
        cursor = state.page_tokens.read(digest, query.page) if query.page is not None else None
    except SearchError as err:
        raise FhirError(400, err.code, err.diagnostics) from None
    if cursor is None:
        state.hooks.run_before_search(query)
    try:
        result = run_search(state.reader, query, cursor)
    except SearchError as err:  # too costly to finish: too many includes, the statement timeout
        raise FhirError(400, err.code, err.diagnostics) from None
    result.matches = [(rid, guard.shown(rtype, content)) for rid, content in result.matches]
    result.includes = [(t, rid, guard.shown(t, content)) for t, rid, content in result.includes]
    # the audit reads the patients of the studies served off their JSON
    contents = dict(result.matches) if rtype == "ImagingStudy" else {}
    contents.update((rid, content) for t, rid, content in result.includes if t == "ImagingStudy")
    note_served([(rtype, rid) for rid, _ in result.matches] + [(t, i) for t, i, _ in result.includes], contents)
    self_params = list(query.applied) + ([("_page", query.page)] if query.page is not None else [])
    next_url = None
    if result.has_more and result.matches:
        assert result.cursor is not None  # a page of matches ends at its last one
        token = state.page_tokens.make(digest, result.cursor)
        next_url = search_url(state.base_url, rtype, list(query.applied) + [("_page", token)])
    return _json(
        searchset(
            state.base_url,
            rtype,
            result,
            search_url(state.base_url, rtype, self_params),
            next_url,
            query.summary,
            query.elements,
        )
    )


@bp.post("/Patient/$match")
@serves(PATIENT_MATCH)
def patient_match() -> Response:
    """FHIR MPI `$match`: a Parameters with a Patient in, a searchset of scored Patients out."""
    from app.identity.match import MATCH_GRADE, MatchInputError, match, parse_parameters

    if request.mimetype not in ("application/fhir+json", "application/json"):
        raise FhirError(415, "not-supported", "POST Patient/$match takes a Parameters resource in JSON or XML")
    state = current_state()
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
        entries.append(
            {
                "fullUrl": f"{state.base_url}/Patient/{rid}",
                "resource": orjson.Fragment(current[2]),
                "search": {
                    "extension": [{"url": MATCH_GRADE, "valueCode": grade}],
                    "mode": "match",
                    "score": round(score, 4),
                },
            }
        )
    return _json(match_bundle(entries, f"{state.base_url}/Patient/$match"))


def init_app(app: Flask, state: ApiState) -> None:
    from app.fhir import batch, bulk, groups, history, subscriptions, trail

    app.register_blueprint(bp, url_prefix="/fhir")
    for more in (history.bp, batch.bp, trail.bp, groups.bp, bulk.bp, subscriptions.bp):
        app.register_blueprint(more, url_prefix="/fhir")
    bulk.init_app(app, state)  # Bulk Data export: its jobs' worker
    subscriptions.init_app(app, state)  # Subscriptions: the node's notification worker
