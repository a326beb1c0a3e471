"""History at its three levels (FHIR R4 http 3.1.0.12): `[type]/[id]/_history`, `[type]/_history`
and `_history`, newest first, with `_since`, `_at`, `_count` and signed paging links.

Instance history is a read of the resource (the Guard's `before_read`); type and system history
look across resources like a search, so they need the search permission (SMART v2: `s` grants
type and system history) and see only what a search of each type would: the Guard's
restrictions go into the SQL, and each older version is shown only if the request may see it
(`version_visible`: a study can move to another patient). System history covers the types the
request may search and refuses (403) only a request that may search none.
"""

from __future__ import annotations

from dataclasses import replace

from flask import Blueprint, Response, request

from app.api.hooks import Guard, note_served
from app.api.interactions import HISTORY_INSTANCE, HISTORY_SYSTEM, HISTORY_TYPE, serves
from app.api.state import current_state
from app.errors import FhirError
from app.fhir.bundle import history, search_url
from app.fhir.routes import _check_id, _check_type, _json, _strict, check_format
from app.fhir.versions import version_shown
from app.search.history import HistoryQuery, parse_history
from app.search.paging import search_digest
from app.search.params import RESOURCE_TYPES
from app.search.query import SearchError, SearchQuery
from app.store.history import HistoryScope, cursor_shape, exists, read_page

bp = Blueprint("fhir_history", __name__)


@bp.before_request
def _negotiate() -> None:
    check_format()


@bp.get("/<rtype>/<rid>/_history")
@serves(HISTORY_INSTANCE)
def history_instance(rtype: str, rid: str) -> Response:
    _check_type(rtype)
    _check_id(rtype, rid)
    state = current_state()
    guard = state.hooks.guard
    guard.before_read(rtype, rid)
    if not exists(state.reader, rtype, rid):
        raise FhirError(404, "not-found", f"{rtype}/{rid} is not known")
    return _history(f"{rtype}/{rid}/_history", HistoryScope(rtype=rtype, rid=rid), guard)


@bp.get("/<rtype>/_history")
@serves(HISTORY_TYPE)
def history_type(rtype: str) -> Response:
    _check_type(rtype)
    guard = current_state().hooks.guard
    guard.before_search(rtype)
    visible = SearchQuery(rtype=rtype)
    guard.restrict(visible)
    return _history(f"{rtype}/_history", HistoryScope(rtype=rtype, restrictions=visible.restrictions), guard)


@bp.get("/_history")
@serves(HISTORY_SYSTEM)
def history_system() -> Response:
    guard = current_state().hooks.guard
    types, refused = [], None
    for rtype in RESOURCE_TYPES:
        try:
            guard.before_search(rtype)
        except FhirError as err:
            refused = refused or err
            continue
        types.append(rtype)
    if refused is not None and not types:
        raise refused
    visible = SearchQuery(rtype=types[0])
    guard.restrict(visible)
    return _history("_history", HistoryScope(types=tuple(types), restrictions=visible.restrictions), guard)


def _parse(path: str, scope: HistoryScope, guard: Guard) -> tuple[HistoryQuery, str, list | None]:
    """The request's parameters, the digest its paging links carry, and where its page starts."""
    state = current_state()
    try:
        query = parse_history(
            list(request.args.items(multi=True)),
            zone=state.config.timezone,
            default_count=state.config.server.default_count,
            max_count=state.config.server.max_count,
            strict=_strict(),
        )
        digest = search_digest(path, query.applied, guard.binding())
        cursor = state.page_tokens.read(digest, query.page) if query.page is not None else None
    except SearchError as err:
        raise FhirError(400, err.code, err.diagnostics) from None
    shape = cursor_shape(scope)
    if cursor is not None and (
        len(cursor) != len(shape) or not all(type(v) is t for v, t in zip(cursor, shape, strict=True))
    ):
        raise FhirError(400, "invalid", "parameter '_page': the paging token belongs to another history")
    return query, digest, cursor


def _history(path: str, scope: HistoryScope, guard: Guard) -> Response:
    state = current_state()
    query, digest, cursor = _parse(path, scope, guard)
    scope = replace(scope, since=query.since, at=query.at)
    page = read_page(state.reader, scope, query.count, cursor)
    shown = [v for v in page.versions if version_shown(guard, state.reader, v.rtype, v.rid, v.version, v.content)]
    # the audit names the patients of what was shown: the studies' subjects off the JSON served
    returned = list(dict.fromkeys((v.rtype, v.rid) for v in shown))
    contents: dict[str, bytes] = {}
    for v in shown:
        if v.rtype == "ImagingStudy" and not v.deleted:
            contents.setdefault(v.rid, v.content)
    note_served(returned, contents)
    # a Patient's links trimmed to what the request may see, as on every other path (Guard.shown)
    shown = [v if v.deleted else replace(v, content=guard.shown(v.rtype, v.content)) for v in shown]
    next_url = None
    if page.has_more:
        assert page.cursor is not None  # a page with more after it ends at its last version
        token = state.page_tokens.make(digest, page.cursor)
        next_url = search_url(state.base_url, path, [*query.applied, ("_page", token)])
    self_params = [*query.applied] + ([("_page", query.page)] if query.page is not None else [])
    # a total only where it is exact and shows nothing hidden: the first page holds everything
    total = len(shown) if cursor is None and not page.has_more and query.count else None
    return _json(history(state.base_url, shown, search_url(state.base_url, path, self_params), next_url, total))
