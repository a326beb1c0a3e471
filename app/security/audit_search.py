"""`GET /fhir/AuditEvent`: the audit trail, searchable by `date`, `patient`, `agent`,
`entity-type`, `outcome` (FHIR R4 AuditEvent search parameters), newest first.

Only for a token with a user- or system-level scope on AuditEvent (`system/AuditEvent.rs`,
`user/AuditEvent.rs`, or `*`); a patient-context token gets 403, since the trail names
every patient. An open server shows it to anyone, as it shows everything.
"""
from __future__ import annotations

import re

from flask import Blueprint, Response, current_app, request

from app.fhir.bundle import search_url, searchset
from app.fhir.errors import FHIR_JSON, FhirError
from app.fhir.paging import search_digest
from app.fhir.routes import check_format
from app.search.dates import DateFormatError, date_range
from app.search.params import AUDIT_EVENT_PARAMS
from app.search.query import DATE_PREFIXES, SearchError
from app.security.access import SEARCH, current_access
from app.security.audit import render_event
from app.security.scope import binding
from app.store.search_sql import SearchResult, date_condition

bp = Blueprint("audit", __name__)
bp.before_request(check_format)

PARAMS = tuple(p.name for p in AUDIT_EVENT_PARAMS)
ENTITY_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OUTCOME_SYSTEM = "http://hl7.org/fhir/audit-event-outcome"
_PREFIX = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)?(.*)$")


def _state():
    return current_app.extensions["imaging-facade"]


def _require_scope() -> None:
    access = current_access()
    if access.open:
        return
    if access.in_patient_context:
        raise FhirError(403, "forbidden", "the audit trail is not open to a patient-context access token")
    if not any(grant.context in ("user", "system") and grant.covers("AuditEvent", SEARCH) for grant in access.grants):
        raise FhirError(403, "forbidden", "searching AuditEvent needs a user- or system-level AuditEvent scope")


def _values(name: str, value: str) -> list[str]:
    values = value.split(",")
    if any(v == "" for v in values):
        raise SearchError("invalid", f"parameter '{name}': empty value")
    return values


def _token(name: str, raw: str, system: str) -> str:
    """`code`, `|code` or `system|code` (the one system these codes have)."""
    if "|" in raw:
        given, _, code = raw.partition("|")
        if given not in ("", system):
            raise SearchError("invalid", f"parameter '{name}': the codes are in {system}")
        return code
    return raw


def _patient(raw: str, base_url: str) -> str:
    value = raw[len(base_url) + 1:] if raw.startswith(base_url + "/") else raw
    if value.startswith("Patient/"):
        value = value[len("Patient/"):]
    if "/" in value:
        raise SearchError("invalid", f"parameter 'patient': {raw!r} is not a Patient id or reference")
    return value


def _condition(name: str, value: str, params: list, zone: str, base_url: str) -> str:
    if name == "date":
        prefix, text = _PREFIX.match(value).groups()
        try:
            low, high = date_range(text, zone)
        except DateFormatError:
            raise SearchError("invalid", f"parameter 'date': {value!r} is not a date; use an optional prefix "
                                         f"({', '.join(DATE_PREFIXES)}) and a FHIR date") from None
        return date_condition("recorded", "(recorded + 1)", prefix or "eq", low, high, params)
    values = _values(name, value)
    if name == "outcome":
        codes = [_token(name, v, OUTCOME_SYSTEM) for v in values]
        params.extend(codes)
        return f"outcome IN ({', '.join('?' * len(codes))})"
    if name == "entity-type":
        # every event has a system object (2: the query); a person (1) exactly when it names patients
        codes = {_token(name, v, ENTITY_TYPE_SYSTEM) for v in values}
        if "2" in codes:
            return "1 = 1"
        if "1" not in codes:
            return "1 = 0"
        params.append("patient")
        return "id IN (SELECT event_id FROM audit_index WHERE param = ?)"
    if name == "patient":
        values = [_patient(v, base_url) for v in values]
    params += [name, *values]
    return f"id IN (SELECT event_id FROM audit_index WHERE param = ? AND value IN ({', '.join('?' * len(values))}))"


def _strict() -> bool:
    return "handling=strict" in request.headers.get("Prefer", "")


@bp.get("/AuditEvent")
def search_get():
    return _search(list(request.args.items(multi=True)))


@bp.post("/AuditEvent/_search")
def search_post():
    return _search(list(request.args.items(multi=True)) + list(request.form.items(multi=True)))


def _search(items: list[tuple[str, str]]) -> Response:
    _require_scope()
    state = _state()
    conditions, params, applied = [], [], []
    count, page = state.config.server.default_count, None
    try:
        for name, value in items:
            if name == "_count":
                if not value.isdigit():
                    raise SearchError("invalid", f"parameter '_count': {value!r} is not a non-negative integer")
                count = min(int(value), state.config.server.max_count)
                applied.append((name, str(count)))
            elif name == "_page":
                page = value
            elif name in PARAMS:
                conditions.append(_condition(name, value, params, state.config.timezone, state.base_url))
                applied.append((name, value))
            elif name != "_format" and _strict():
                raise SearchError("not-supported", f"unknown search parameter '{name}' for AuditEvent "
                                                   f"(supported: {', '.join(PARAMS)})")
        digest = search_digest("AuditEvent", applied, binding())
        cursor = state.page_tokens.read(digest, page) if page is not None else None
    except SearchError as err:
        raise FhirError(400, err.code, err.diagnostics) from None
    where = " AND ".join(conditions) or "1 = 1"
    state.audit_log.flush()  # what this process spooled, up to the request before this one
    total = state.audit_log.all(f"SELECT COUNT(*) FROM audit_event WHERE {where}", params)[0][0]
    page_params = list(params)
    after = ""
    if cursor is not None:
        if len(cursor) != 2:
            raise FhirError(400, "invalid", "parameter '_page': the paging token belongs to another search")
        after = " AND (recorded < ? OR (recorded = ? AND id < ?))"
        page_params += [cursor[0], cursor[0], cursor[1]]
    rows = state.audit_log.all(f"SELECT id, content, recorded FROM audit_event WHERE {where}{after} "
                               "ORDER BY recorded DESC, id DESC LIMIT ?", [*page_params, count + 1])
    has_more = len(rows) > count
    rows = rows[:count]
    result = SearchResult([(r[0], render_event(r[0], r[2], r[1])) for r in rows], total, has_more, [])
    next_url = None
    if has_more and rows:
        token = state.page_tokens.make(digest, [rows[-1][2], rows[-1][0]])
        next_url = search_url(state.base_url, "AuditEvent", applied + [("_page", token)])
    self_params = applied + ([("_page", page)] if page is not None else [])
    body = searchset(state.base_url, "AuditEvent", result, search_url(state.base_url, "AuditEvent", self_params),
                     next_url)
    return Response(body, content_type=FHIR_JSON)


def init_app(app) -> None:
    app.register_blueprint(bp, url_prefix="/fhir")

