"""The audit trail's record of one event, and the AuditEvent made of it when the trail is read
(FHIR R4 AuditEvent, IHE Basic Audit Log Patterns).

A request writes only what its event says, as a few hundred bytes of compact JSON
(`event_record`); the AuditEvent resource is made of it when the trail is read
(`render_event`), since a trail is written on every request and read seldom. No model is
built either way: plain dicts serialized with orjson. Rows stored as AuditEvent JSON by
earlier releases are served as they are.
"""

from __future__ import annotations

import base64
import functools
import re
from typing import Protocol
from urllib.parse import unquote_plus

import orjson

from app.clock import micros_to_instant

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EVENT_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "RESTful Operation",
}
INTERACTION_SYSTEM = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/object-role"
AGENT_SYSTEM = "urn:imaging-facade:agent"


#: parameters that carry a credential, never stored: RFC 6750 2.2/2.3 `access_token`; OAuth 2.0
#: (RFC 6749) `code`, `refresh_token`, `client_secret`, `password`; RFC 7521 `assertion`,
#: `client_assertion`; OpenID Connect `id_token`; RFC 7662/7009 `token`. None of them is a
#: search parameter of a type served here. Matched case-insensitively.
CREDENTIAL_PARAMETERS = frozenset(
    {
        "access_token",
        "id_token",
        "refresh_token",
        "token",
        "code",
        "client_secret",
        "client_assertion",
        "assertion",
        "password",
        "authorization",
    }
)
#: a JWS/JWE compact serialization (RFC 7515/7516): base64url of a JSON header (`{"` is `eyJ`), dots
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_.-]*")
#: an Authorization header's value (RFC 9110 11.4: scheme, space, credentials)
_AUTH_SCHEME = re.compile(r"\s*(?:bearer|basic|dpop|digest|negotiate)\s+\S", re.IGNORECASE)
#: what any credential contains somewhere (a name, a JWT, a scheme) or what could encode one: a
#: query without any of these (compared lowercased) is stored without being taken apart
_MAYBE = (
    "token",
    "code",
    "secret",
    "assert",
    "passw",
    "authori",
    "eyj",
    "bearer",
    "basic",
    "dpop",
    "digest",
    "negotiate",
    "%",
)
REDACTED = "REDACTED"


def is_credential(name: str, value: str) -> bool:
    """Whether a (decoded) parameter carries a credential: by its name, or by its value's shape."""
    return name.strip().lower() in CREDENTIAL_PARAMETERS or bool(_JWT.search(value) or _AUTH_SCHEME.match(value))


def redact_query(query: str) -> str:
    """The query as sent, each credential's value replaced by REDACTED: a token sent in the URL
    or a form body is refused (only the Authorization header counts) but would otherwise stay in
    the trail, readable by whoever may search it. Parameters are compared decoded, so no
    percent-encoding hides one; the rest of the query stays as it was sent."""
    lowered = query.lower()
    if not any(hint in lowered for hint in _MAYBE):
        return query
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            name, value = unquote_plus(name), unquote_plus(value)
        if is_credential(name, value):
            parts[i] = part.partition("=")[0] + "=" + REDACTED
    return "&".join(parts)


def redact_path(path: str) -> str:
    """The path, a JWT pasted into it replaced (a path holds no other kind of credential)."""
    return _JWT.sub(REDACTED, path)


class Requester(Protocol):
    """Who made a request, as far as its event says (app/security/access.py `Access`)."""

    @property
    def open(self) -> bool: ...
    @property
    def subject(self) -> str | None: ...
    @property
    def client_id(self) -> str | None: ...


def outcome_code(status: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (4xx: refused or bad), 8 serious (5xx)."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


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
    agent = {
        "type": {"coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]},
        "who": {"display": "imaging-facade"},
        "requestor": False,
        "network": {"address": base_url, "type": "5"},
    }
    source = {
        "site": base_url,
        "observer": {"display": "imaging-facade"},
        "type": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4",
                "display": "Application Server",
            }
        ],
    }
    return agent, source


def event_record(
    *,
    subtype: str | None,
    action: str,
    status: int,
    base_url: str,
    access: Requester,
    address: str | None,
    query: str,
    path: str,
    read: tuple[str, str] | None,
    patients: list[str],
) -> tuple[bytes, list[tuple[str, str]]]:
    """What the event says, as the compact JSON the trail keeps, and its lookup rows (param, value).

    The lookup rows are the agents and patients; every event has a system-object entity (the
    query, its credentials redacted) and a person entity exactly when it names patients, which
    AuditEvent search derives. `render_event` makes the AuditEvent of it when the trail is read."""
    who = access.subject or access.client_id
    record = {
        "status": status,
        "subtype": subtype,
        "action": action,
        "who": who,
        "client": access.client_id,
        "open": access.open,
        "address": address,
        "query": redact_query(query),
        "path": redact_path(path),
        "read": f"{read[0]}/{read[1]}" if read else None,
        "patients": patients,
        "server": base_url,
    }
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
        "who": (
            {"identifier": {"system": AGENT_SYSTEM, "value": who}} if who else _ANONYMOUS if r["open"] else _UNKNOWN
        ),
        "requestor": True,
        "network": {"address": r["address"] or "unknown", "type": "2"},
    }
    if client and client != who:
        requestor["altId"] = client
    entities: list[dict] = [
        {
            "type": _SYSTEM_OBJECT,
            "role": _QUERY_ROLE,
            "description": r["path"],
            "query": base64.b64encode(r["query"].encode()).decode(),
        }
    ]
    if r["read"]:
        entities.append({"what": {"reference": r["read"]}, "type": _SYSTEM_OBJECT, "role": _RESOURCE_ROLE})
    entities.extend(
        {"what": {"reference": f"Patient/{pid}"}, "type": _PERSON, "role": _PATIENT_ROLE} for pid in r["patients"]
    )
    outcome = outcome_code(r["status"])
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
