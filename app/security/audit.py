"""One AuditEvent per read, search and refused request (IHE Basic Audit Log Patterns, FHIR R4).

An `after_request` hook sees every answer, also the 401 and 403 ones, and writes its event
to disk (the audit spool, app/store/audit_log.py) before the response leaves; if the event
cannot be written the client gets a 500 instead of the data, so nothing is served without
its trail. The event names the interaction (type `rest`, subtype read, vread,
history-instance or search-type), who asked (the token's subject or client, and the network
address), this server, the query (base64 of the query string) and every patient whose data
the answer carried: the Patients it returned and the subjects of the studies it returned
(includes too).

A request writes only what its event says, as a few hundred bytes of compact JSON
(`event_record`); the AuditEvent resource is made of it when the trail is read
(`render_event`), since a trail is written on every request and read seldom. No model is
built either way: plain dicts serialized with orjson.
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
from app.clock import micros_to_instant
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


def touched_patients(reader, returned: list[tuple[str, str]], contents: dict | None = None) -> list[str]:
    """Patients whose data an answer carries: returned Patients, subjects of returned studies.

    `contents`: study -> its stored JSON, as the answer served it; the subject is read off it,
    and only studies without one at hand are looked up."""
    contents = contents or {}
    patients, studies = set(), set()
    for rtype, rid in returned:
        if rtype == "ImagingStudy":
            subject = study_subject(contents.get(rid))
            if subject is None:
                studies.add(rid)
            else:
                patients.add(subject)
        elif rtype == "Patient":
            patients.add(rid)
    if studies:
        patients.update(_study_subjects(reader, sorted(studies)))
    return sorted(patients)


_SUBJECT = b'"subject":{"reference":"Patient/'


def study_subject(content: bytes | None) -> str | None:
    """The Patient id of a stored ImagingStudy's subject, read off its JSON as the store wrote it
    (orjson: compact, `reference` the subject's first key; a FHIR id holds no quote); None when
    it is not there in that form. A search for it would cost more than the search it audits."""
    if not content:
        return None
    start = content.find(_SUBJECT)
    if start < 0:
        return None
    start += len(_SUBJECT)
    end = content.find(b'"', start)
    return content[start:end].decode() if end > start else None


def _study_subjects(reader, studies: list[str]) -> set[str]:
    # by the owner index: SQLite without statistics (a store not yet analyzed) would otherwise
    # scan every study's patient reference in the covering lookup index, 9 ms at 40,000 studies
    table = "idx_reference INDEXED BY ix_reference_owner" if reader.is_sqlite else "idx_reference"
    found = set()
    for start in range(0, len(studies), 500):
        chunk = studies[start:start + 500]
        rows = reader.all(f"SELECT target_id FROM {table} WHERE rtype = ? AND param = ? AND target_type = ? "
                          f"AND rid IN ({', '.join('?' * len(chunk))})",
                          ["ImagingStudy", "patient", "Patient", *chunk])
        found.update(r[0] for r in rows)
    return found


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


def event_record(*, subtype: str | None, action: str, status: int, base_url: str, access, address: str | None,
                 query: str, path: str, read: tuple[str, str] | None, patients: list[str]) -> tuple[bytes, list]:
    """What the event says, as the compact JSON the trail keeps, and its lookup rows (param, value).

    The lookup rows are the agents and patients; every event has a system-object entity (the
    query) and a person entity exactly when it names patients, which AuditEvent search derives.
    `render_event` makes the AuditEvent of it when the trail is read."""
    who = access.subject or access.client_id
    record = {"status": status, "subtype": subtype, "action": action, "who": who, "client": access.client_id,
              "open": access.open, "address": address, "query": query, "path": path,
              "read": f"{read[0]}/{read[1]}" if read else None, "patients": patients, "server": base_url}
    index = [("agent", value) for value in {who, access.client_id} if value]
    index += [("patient", pid) for pid in patients]
    return orjson.dumps(record), index


def render_event(event_id: str, recorded: int, content: bytes) -> bytes:
    """The AuditEvent JSON of a stored event (`content` as `event_record` made it); events stored
    as AuditEvent JSON already are returned as they are."""
    content = bytes(content)
    if content.startswith(b'{"resourceType"'):
        return content
    r = orjson.loads(content)
    # kept to the microsecond, so events order as they happened; shown to the millisecond
    instant = micros_to_instant(recorded // 1000 * 1000)
    who, client = r["who"], r["client"]
    requestor: dict = {
        "type": _SOURCE_ROLE,
        "who": ({"identifier": {"system": AGENT_SYSTEM, "value": who}} if who else
                _ANONYMOUS if r["open"] else _UNKNOWN),
        "requestor": True,
        "network": {"address": r["address"] or "unknown", "type": "2"},
    }
    if client and client != who:
        requestor["altId"] = client
    entities: list[dict] = [{"type": _SYSTEM_OBJECT, "role": _QUERY_ROLE, "description": r["path"],
                             "query": base64.b64encode(r["query"].encode()).decode()}]
    if r["read"]:
        entities.append({"what": {"reference": r["read"]}, "type": _SYSTEM_OBJECT, "role": _RESOURCE_ROLE})
    entities.extend({"what": {"reference": f"Patient/{pid}"}, "type": _PERSON, "role": _PATIENT_ROLE}
                    for pid in r["patients"])
    outcome = _outcome(r["status"])
    event = {
        "resourceType": "AuditEvent",
        "id": event_id,
        "meta": {"versionId": "1", "lastUpdated": instant},
        "type": EVENT_TYPE,
        "action": r["action"],
        "recorded": instant,
        "outcome": outcome,
    }
    if r["subtype"]:
        event["subtype"] = [{"system": INTERACTION_SYSTEM, "code": r["subtype"], "display": r["subtype"]}]
    if outcome != "0":
        event["outcomeDesc"] = f"HTTP {r['status']}"
    destination, source = _this_server(r["server"])
    event["agent"] = [requestor, destination]
    event["source"] = source
    event["entity"] = entities
    return orjson.dumps(event)


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
                                     getattr(found, "contents", None)) if status < 400 else [])
        args = req.view_args or {}
        read = ("ImagingStudy", args.get("study")) if "study" in args else (args.get("rtype"), args.get("rid"))
        content, index = event_record(
            subtype=interaction[0], action=interaction[1], status=status, base_url=state.base_url,
            access=current_access(), address=req.remote_addr, query=_query_text(req), path=req.path,
            read=read if all(read) else None, patients=patients)
        state.audit_log.write(_event_ids.next(), time.time_ns() // 1000, _outcome(status), content, index)
    except Exception as err:  # no trail, no data
        log.error("could not record the audit event of a request: %s", describe(err))
        response.close()
        return outcome_response(500, "exception", "the request could not be audited; nothing was served")
    return response


def init_app(app: Flask) -> None:
    app.after_request(record)
