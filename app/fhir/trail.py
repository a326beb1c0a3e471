"""`AuditEvent/{id}`: one event of the audit trail, read with the permission that searches it.

Bundles of the trail give each event a `fullUrl` (FHIR R4 Bundle.entry.fullUrl resolves to the
resource), so an event must be readable there. Whoever may search the trail may read any event
of it, and nobody else (the Guard's AuditEvent search check: a user- or system-level AuditEvent
scope, never a patient-context token). Events this process has spooled are stored first, as
before a search of the trail, so the event a client has just been told of is found.
"""

from __future__ import annotations

from flask import Blueprint, Response

from app.api.hooks import note_served
from app.api.interactions import READ, serves
from app.api.state import current_state
from app.errors import FhirError
from app.fhir.routes import _check_id, _json, check_format
from app.search.query import SearchQuery
from app.store.audit_record import render_event
from app.store.resources import read_audit_event

bp = Blueprint("fhir_trail", __name__)


@bp.before_request
def _negotiate() -> None:
    check_format()


@bp.get("/AuditEvent/<rid>", defaults={"rtype": "AuditEvent"})
@serves(READ)
def read_event(rtype: str, rid: str) -> Response:
    _check_id(rtype, rid)
    state = current_state()
    state.hooks.guard.before_search(rtype)
    state.hooks.run_before_search(SearchQuery(rtype=rtype))
    found = read_audit_event(state.reader, rid)
    if found is None:
        raise FhirError(404, "not-found", f"AuditEvent/{rid} is not known")
    note_served([(rtype, rid)])
    return _json(render_event(rid, found[0], found[1]))
