"""Topic-based Subscriptions, R4 flavour (Subscriptions R5 Backport IG v1.1.0):

- `POST [base]/Subscription`: the one way to create one (profile backport-subscription, checked
  in app/fhir/subscription_body.py); 201 with the stored Subscription, status `requested`;
- `GET [base]/Subscription/[id]`, `GET [base]/Subscription?_id=&status=&url=`, `DELETE
  [base]/Subscription/[id]`;
- `$status` at instance and type level (IG OperationDefinition backport-subscription-status):
  a searchset Bundle of `Parameters` (profile backport-subscription-status-r4), type `query-status`.

SMART (app/security/subscriptions.py through the hooks): creating needs `c` on Subscription,
reading `r`, searching and `$status` `s`, deleting `d`; a token bound to a patient may only
subscribe with a `patient` filter naming its own patient (403 otherwise). A subscription is its
creator's: another client (or user) gets 404, as for one that does not exist. Every request is
audited (app/api/interactions.py SUBSCRIPTION_*).
"""

from __future__ import annotations

import re
import time
import uuid

import orjson
from flask import Blueprint, Flask, Response, current_app, request

from app.api.hooks import SubscriptionGrant
from app.api.interactions import (
    SUBSCRIPTION_CREATE,
    SUBSCRIPTION_DELETE,
    SUBSCRIPTION_EVENTS,
    SUBSCRIPTION_READ,
    SUBSCRIPTION_SEARCH,
    SUBSCRIPTION_STATUS,
    serves,
)
from app.api.outcome import FHIR_JSON, outcome
from app.api.state import ApiState, current_state
from app.clock import micros_to_instant
from app.errors import FhirError
from app.fhir.routes import check_format
from app.fhir.subscription_body import CONTENTS, PROFILE, BodyError, check
from app.notify.bundle import notification, shown
from app.notify.worker import NotifyWorker
from app.store import subscriptions
from app.store.resources import read_current
from app.store.subscriptions import Subscription

bp = Blueprint("fhir_subscriptions", __name__)
EXTENSION = "imaging-facade-notify"
STATUS_PROFILE = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
#: R4 subscription-status codes
STATUSES = ("requested", "active", "error", "off")
_ID = re.compile(r"^[0-9a-f]{32}$")
_SEARCH_PARAMS = ("_id", "status", "url")
_IGNORED = ("_format", "_pretty", "_count")
_MAX_BODY = 64 * 1024
#: what a subscriber is told a permission is needed for
_VERBS = {"c": "create", "r": "read", "s": "search", "d": "delete"}
_SUB = "Subscription"


@bp.before_request
def _negotiate() -> None:
    check_format()


def _worker() -> NotifyWorker:
    return current_app.extensions[EXTENSION]


def init_app(app: Flask, state: ApiState) -> None:
    """The node's notification worker; started at once when the store holds live subscriptions
    (to send what is left after a restart), else with the first Subscription created."""
    worker = NotifyWorker(state.store.engine, state.reader, state.config.subscriptions, state.base_url)
    app.extensions[EXTENSION] = worker
    if subscriptions.any_live(state.store.engine):
        worker.start()


def _grant(permission: str) -> SubscriptionGrant:
    """The request's grant, if it holds `permission` on Subscription; 403 otherwise."""
    grant = current_state().hooks.subscription_grant()
    if permission not in grant.permissions:
        verb = _VERBS[permission]
        raise FhirError(
            403,
            "forbidden",
            f"the token's scopes do not allow to {verb} a Subscription: it needs a scope such as "
            f"user/Subscription.{permission} or system/Subscription.{permission}",
        )
    return grant


def _json(body: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, headers=headers or {}, content_type=FHIR_JSON)


def _own(rid: str, grant: SubscriptionGrant) -> Subscription:
    found = subscriptions.get(current_state().store.engine, rid) if _ID.match(rid) else None
    if found is None or found.owner != grant.owner:
        raise FhirError(404, "not-found", f"Subscription/{rid[:64]} is not known")
    return found


def _body() -> object:
    if request.mimetype not in ("application/fhir+json", "application/json"):
        raise FhirError(415, "not-supported", "a Subscription is sent as application/fhir+json")
    if (request.content_length or 0) > _MAX_BODY:
        raise FhirError(413, "too-costly", f"a Subscription may not exceed {_MAX_BODY} bytes")
    data = request.get_data(cache=False)
    if len(data) > _MAX_BODY:
        raise FhirError(413, "too-costly", f"a Subscription may not exceed {_MAX_BODY} bytes")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise FhirError(400, "invalid", "the body is not valid JSON") from None


@bp.post("/Subscription")
@serves(SUBSCRIPTION_CREATE)
def create() -> Response:
    grant = _grant("c")
    state = current_state()
    body = _body()
    try:
        asked = check(body, state.base_url)
    except BodyError as err:
        raise FhirError(400, "invalid", str(err)) from None
    if grant.patient is not None:
        patients = {value for name, value in asked.filters if name == "patient"}
        if patients != {grant.patient}:
            raise FhirError(
                403,
                "forbidden",
                "a token bound to a patient may subscribe only to its own patient's studies: add the filter "
                f"ImagingStudy?patient=Patient/{grant.patient} (and no other patient)",
            )
    assert isinstance(body, dict)
    now = time.time_ns() // 1000
    rid = uuid.uuid4().hex
    resource = {k: v for k, v in body.items() if k not in ("id", "meta", "text")}
    resource = {
        "resourceType": _SUB,
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": micros_to_instant(now), "profile": [PROFILE]},
        **{k: v for k, v in resource.items() if k != "resourceType"},
        "status": "requested",
    }
    subscriptions.create(
        state.store.engine,
        Subscription(
            id=rid,
            owner=grant.owner,
            status="requested",
            topic=asked.topic_url,
            endpoint=asked.endpoint,
            resource=orjson.dumps(resource),
            created=now,
            events=0,
            error=None,
            content=asked.content,
            filters=tuple(asked.filters),
            heartbeat=asked.heartbeat or None,
            may_read=1 if grant.reads_studies else 0,
        ),
    )
    worker = _worker()
    worker.start()
    worker.wake()  # its handshake now
    location = f"{state.base_url}/Subscription/{rid}/_history/1"
    return _json(resource, 201, {"Location": location, "ETag": 'W/"1"'})


def _served(sub: Subscription) -> dict:
    """The stored Subscription with its current status (and why, when it is `error`)."""
    resource = orjson.loads(sub.resource)
    resource["status"] = sub.status
    if sub.error:
        resource["error"] = sub.error
    else:
        resource.pop("error", None)
    return resource


@bp.get("/Subscription/<rid>", defaults={"rtype": _SUB})
@serves(SUBSCRIPTION_READ)
def read(rid: str, rtype: str) -> Response:
    return _json(_served(_own(rid, _grant("r"))))


@bp.delete("/Subscription/<rid>", defaults={"rtype": _SUB})
@serves(SUBSCRIPTION_DELETE)
def delete(rid: str, rtype: str) -> Response:
    grant = _grant("d")
    sub = _own(rid, grant)
    subscriptions.remove(current_state().store.engine, sub.id, grant.owner)
    return _json(outcome("informational", f"Subscription/{sub.id} was deleted", severity="information"))


def _values(name: str) -> list[str] | None:
    """The comma-separated values of every `name` parameter (ORed), or None without one."""
    given = request.args.getlist(name)
    if not given:
        return None
    values = [v for value in given for v in value.split(",")]
    if any(not v for v in values):
        raise FhirError(400, "invalid", f"parameter '{name}': an empty value")
    return values


def _strict() -> bool:
    return "handling=strict" in request.headers.get("Prefer", "").replace(" ", "").lower()


def _narrowed(grant: SubscriptionGrant, known: tuple[str, ...], id_param: str) -> list[Subscription]:
    unknown = [k for k in request.args if k not in known and k not in _IGNORED]
    if unknown and _strict():
        raise FhirError(400, "not-supported", f"parameter '{unknown[0][:40]}' is not supported here")
    statuses = _values("status")
    if statuses is not None:
        wrong = [s for s in statuses if s not in STATUSES]
        if wrong:
            raise FhirError(
                400, "invalid", f"parameter 'status': '{wrong[0][:20]}' is not one of {', '.join(STATUSES)}"
            )
    return subscriptions.owned(
        current_state().store.engine,
        grant.owner,
        ids=_values(id_param),
        statuses=statuses,
        endpoints=_values("url") if "url" in known else None,
    )


def _searchset(entries: list[dict], link: str) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(entries),
        "link": [{"relation": "self", "url": link}],
        "entry": entries,
    }


def _self_link() -> str:
    query = request.query_string.decode("latin-1")
    return f"{current_state().base_url}{request.path[len('/fhir') :]}" + (f"?{query}" if query else "")


@bp.get("/Subscription")
@serves(SUBSCRIPTION_SEARCH)
def search() -> Response:
    grant = _grant("s")
    base = current_state().base_url
    found = _narrowed(grant, _SEARCH_PARAMS, "_id")
    entries = [
        {"fullUrl": f"{base}/Subscription/{sub.id}", "resource": _served(sub), "search": {"mode": "match"}}
        for sub in found
    ]
    return _json(_searchset(entries, _self_link()))


def status_parameters(sub: Subscription, base_url: str, kind: str) -> dict:
    """A SubscriptionStatus as R4 carries it: a Parameters of profile backport-subscription-status-r4
    (IG v1.1.0; `events-since-subscription-start` is a string, R4 having no integer64)."""
    parameters: list[dict] = [
        {"name": "subscription", "valueReference": {"reference": f"{base_url}/Subscription/{sub.id}"}},
        {"name": "topic", "valueCanonical": sub.topic},
        {"name": "status", "valueCode": sub.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(sub.events)},
    ]
    if sub.status == "error" and sub.error:
        parameters.append({"name": "error", "valueCodeableConcept": {"text": sub.error}})
    return {"resourceType": "Parameters", "meta": {"profile": [STATUS_PROFILE]}, "parameter": parameters}


def _status_bundle(found: list[Subscription]) -> Response:
    base = current_state().base_url
    entries = [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": status_parameters(sub, base, "query-status")}
        for sub in found
    ]
    return _json(_searchset(entries, _self_link()))


@bp.get("/Subscription/$status")
@serves(SUBSCRIPTION_STATUS)
def status_type() -> Response:
    """IG backport-subscription-status at type level: `id` and `status` each ORed, both ANDed."""
    return _status_bundle(_narrowed(_grant("s"), ("id", "status"), "id"))


@bp.get("/Subscription/<rid>/$status", defaults={"rtype": _SUB})
@serves(SUBSCRIPTION_STATUS)
def status_instance(rid: str, rtype: str) -> Response:
    return _status_bundle([_own(rid, _grant("s"))])


def _number(name: str) -> int | None:
    value = request.args.get(name)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 18:
        raise FhirError(400, "invalid", f"parameter '{name}': an event number (a whole number) is needed")
    return int(value)


@bp.get("/Subscription/<rid>/$events", defaults={"rtype": _SUB})
@serves(SUBSCRIPTION_EVENTS)
def events(rid: str, rtype: str) -> Response:
    """IG OperationDefinition backport-subscription-events: past events by number
    (eventsSinceNumber, eventsUntilNumber, both inclusive; at most server.max_count of them),
    as a notification Bundle of type history whose status is of type query-event. `content`
    (empty, id-only, full-resource) is a hint: full-resource only where the creator's scopes
    allow, as for notifications."""
    grant = _grant("r")
    sub = _own(rid, grant)
    state = current_state()
    since = _number("eventsSinceNumber") or 1
    until = _number("eventsUntilNumber")
    until = sub.events if until is None else min(until, sub.events)
    content = request.args.get("content", sub.content)
    if content not in CONTENTS:
        raise FhirError(400, "invalid", f"parameter 'content': one of {', '.join(CONTENTS)}")
    if content == "full-resource" and not (sub.may_read and grant.reads_studies):
        content = "id-only"
    found = subscriptions.events(state.store.engine, sub.id, since, until, state.config.server.max_count)
    resources: dict[str, bytes] = {}
    if content == "full-resource":
        for event in found:
            current = read_current(state.reader, "ImagingStudy", event.study)
            if current is not None and shown(sub, bytes(current[2])):
                resources[event.study] = bytes(current[2])
    body = notification(sub, state.base_url, "query-event", found, content, resources, time.time_ns() // 1000)
    return _json(body)
