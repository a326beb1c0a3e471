"""One AuditEvent per read, search and refused request (IHE Basic Audit Log Patterns, FHIR R4).

An `after_request` hook sees every answer, also the 401 and 403 ones, and writes its event
to disk (the audit spool, app/store/audit_log.py) before the response leaves; if the event
cannot be written the client gets a 500 instead of the data, so nothing is served without
its trail. The event names the interaction (type `rest`, subtype read, vread,
history-instance or search-type), who asked (the token's subject or client, and the network
address), this server, the query (base64 of the query string) and every patient whose data
the answer carried: the Patients it returned and the subjects of the studies it returned
(includes too).

The event is a plain dict serialized with orjson: no model is built per request.
"""
from __future__ import annotations

import base64
import functools
import itertools
import logging
import os
import time
import uuid
from urllib.parse import urlencode

import orjson
from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from app.fhir.errors import outcome_response
from app.logsafe import describe
from app.search.dates import micros_to_instant
from app.security.access import current_access

log = logging.getLogger(__name__)

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
              "display": "RESTful Operation"}
INTERACTION_SYSTEM = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/object-role"
AGENT_SYSTEM = "urn:imaging-facade:agent"

#: Flask endpoint -> (AuditEvent.subtype code, AuditEvent.action): R read, E execute (search)
INTERACTIONS = {
    "fhir.read": ("read", "R"),
    "fhir.vread": ("vread", "R"),
    "fhir.history_instance": ("history-instance", "R"),
    "fhir.search_get": ("search-type", "E"),
    "fhir.search_post": ("search-type", "E"),
    "audit.search_get": ("search-type", "E"),
    "audit.search_post": ("search-type", "E"),
}
#: WADO-RS through the gateway is a read of the study's images
GATEWAY_PREFIX = "wado."


def _outcome(status: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (4xx: refused or bad), 8 serious (5xx)."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def _query_text(req) -> str:
    """The search as sent: the query string, and a POST _search form body after it."""
    text = req.query_string.decode("latin-1")
    if req.method == "POST" and req.mimetype == "application/x-www-form-urlencoded":
        try:
            form = urlencode(list(req.form.items(multi=True)))
        except HTTPException:  # a body refused as too large (413) is recorded without it
            form = "(body not read)"
        text = f"{text}&{form}" if text and form else text or form
    return text


def touched_patients(reader, returned: list[tuple[str, str]], subjects: dict | None = None) -> list[str]:
    """Patients whose data an answer carries: returned Patients, subjects of returned studies.

    `subjects`: study -> patient, as the search found them; only the other studies are looked up."""
    subjects = subjects or {}
    patients = {rid for rtype, rid in returned if rtype == "Patient"}
    patients.update(p for p in subjects.values() if p)
    studies = sorted({rid for rtype, rid in returned if rtype == "ImagingStudy" and rid not in subjects})
    # by the owner index: SQLite without statistics (a store not yet analyzed) would otherwise
    # scan every study's patient reference in the covering lookup index, 9 ms at 40,000 studies
    table = "idx_reference INDEXED BY ix_reference_owner" if reader.is_sqlite else "idx_reference"
    for start in range(0, len(studies), 500):
        chunk = studies[start:start + 500]
        rows = reader.all(f"SELECT target_id FROM {table} WHERE rtype = ? AND param = ? AND target_type = ? "
                          f"AND rid IN ({', '.join('?' * len(chunk))})",
                          ["ImagingStudy", "patient", "Patient", *chunk])
        patients.update(r[0] for r in rows)
    return sorted(patients)


_SYSTEM_OBJECT = {"system": ENTITY_TYPE_SYSTEM, "code": "2", "display": "System Object"}
_PERSON = {"system": ENTITY_TYPE_SYSTEM, "code": "1", "display": "Person"}
_QUERY_ROLE = {"system": ROLE_SYSTEM, "code": "24", "display": "Query"}
_RESOURCE_ROLE = {"system": ROLE_SYSTEM, "code": "4", "display": "Domain Resource"}
_PATIENT_ROLE = {"system": ROLE_SYSTEM, "code": "1", "display": "Patient"}
_SOURCE_ROLE = {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]}
_ANONYMOUS = {"display": "anonymous"}
_UNKNOWN = {"display": "unknown (no valid access token)"}


@functools.lru_cache(maxsize=8)
def _this_server(base_url: str) -> tuple[dict, dict]:
    """The destination agent and the source: the same in every event of this server."""
    agent = {"type": {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]},
             "who": {"display": "imaging-facade"}, "requestor": False,
             "network": {"address": base_url, "type": "5"}}
    source = {"site": base_url, "observer": {"display": "imaging-facade"},
              "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                        "code": "4", "display": "Application Server"}]}
    return agent, source


class _EventIds:
    """Unique AuditEvent ids, cheaper than a uuid4 per request: a random prefix per process and a
    counter; ids of one process sort in the order of its events."""

    def __init__(self):
        self._pid = None

    def next(self) -> str:
        if self._pid != os.getpid():  # a forked worker draws its own prefix
            self._pid, self._prefix, self._counter = os.getpid(), uuid.uuid4().hex[:20], itertools.count()
        return f"{self._prefix}-{next(self._counter):012x}"


_event_ids = _EventIds()


def build_event(*, subtype: str | None, action: str, status: int, base_url: str, access, address: str | None,
                query: str, path: str, read: tuple[str, str] | None, patients: list[str]) -> tuple[dict, list, int]:
    """The AuditEvent dict, its lookup rows (param, value), and when it was recorded (epoch micros).

    The lookup rows are the agents and patients; every event has a system-object entity (the
    query) and a person entity exactly when it names patients, which AuditEvent search derives."""
    # kept to the microsecond, so events order as they happened; shown to the millisecond
    micros = time.time_ns() // 1000
    recorded = micros_to_instant(micros // 1000 * 1000)
    who = access.subject or access.client_id
    requestor: dict = {
        "type": _SOURCE_ROLE,
        "who": ({"identifier": {"system": AGENT_SYSTEM, "value": who}} if who else
                _ANONYMOUS if access.open else _UNKNOWN),
        "requestor": True,
        "network": {"address": address or "unknown", "type": "2"},
    }
    if access.client_id and access.client_id != who:
        requestor["altId"] = access.client_id
    entities: list[dict] = [{"type": _SYSTEM_OBJECT, "role": _QUERY_ROLE, "description": path,
                             "query": base64.b64encode(query.encode()).decode()}]
    if read is not None:
        entities.append({"what": {"reference": f"{read[0]}/{read[1]}"}, "type": _SYSTEM_OBJECT,
                         "role": _RESOURCE_ROLE})
    entities.extend({"what": {"reference": f"Patient/{pid}"}, "type": _PERSON, "role": _PATIENT_ROLE}
                    for pid in patients)
    outcome = _outcome(status)
    event = {
        "resourceType": "AuditEvent",
        "id": _event_ids.next(),
        "meta": {"versionId": "1", "lastUpdated": recorded},
        "type": EVENT_TYPE,
        "action": action,
        "recorded": recorded,
        "outcome": outcome,
    }
    if subtype:
        event["subtype"] = [{"system": INTERACTION_SYSTEM, "code": subtype, "display": subtype}]
    if outcome != "0":
        event["outcomeDesc"] = f"HTTP {status}"
    destination, source = _this_server(base_url)
    event["agent"] = [requestor, destination]
    event["source"] = source
    event["entity"] = entities
    index = [("agent", value) for value in {who, access.client_id} if value]
    index += [("patient", pid) for pid in patients]
    return event, index, micros


def _interaction(endpoint: str | None) -> tuple[str | None, str] | None:
    endpoint = endpoint or ""
    if endpoint in INTERACTIONS:
        return INTERACTIONS[endpoint]
    if endpoint.startswith(GATEWAY_PREFIX):
        return "read", "R"
    return None


def record(response: Response) -> Response:
    """Write the request's AuditEvent; a 500 instead of the answer if that fails."""
    req = request._get_current_object()  # noqa: SLF001 - Flask's documented way past the proxy, read a dozen times
    interaction = _interaction(req.endpoint)
    if interaction is None:
        return response
    state = current_app.extensions["imaging-facade"]
    found = g._get_current_object()  # noqa: SLF001
    try:
        status = response.status_code
        patients = (touched_patients(state.reader, getattr(found, "returned", None) or [],
                                     getattr(found, "subjects", None)) if status < 400 else [])
        args = req.view_args or {}
        read = ("ImagingStudy", args.get("study")) if "study" in args else (args.get("rtype"), args.get("rid"))
        event, index, micros = build_event(
            subtype=interaction[0], action=interaction[1], status=status, base_url=state.base_url,
            access=current_access(), address=req.remote_addr, query=_query_text(req), path=req.path,
            read=read if all(read) else None, patients=patients)
        state.audit_log.write(event["id"], micros, event["outcome"], orjson.dumps(event), index)
    except Exception as err:  # no trail, no data
        log.error("could not record the audit event of a request: %s", describe(err))
        response.close()
        return outcome_response(500, "exception", "the request could not be audited; nothing was served")
    return response


def init_app(app: Flask) -> None:
    app.after_request(record)
