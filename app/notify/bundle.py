"""Notification Bundles (Subscriptions R5 Backport IG v1.1.0, "Notifications" for R4): a Bundle of
type `history` whose first entry is the SubscriptionStatus, in R4 a `Parameters` of profile
backport-subscription-status-r4 (subscription, topic, status, type, events-since-subscription-start,
and per event a notification-event with event-number, timestamp and, unless the payload is
`empty`, focus). Then, for `id-only`, an entry per focus with its fullUrl only; for
`full-resource`, with the resource too. History entries carry request and response (FHIR R4
Bundle bdl-3/bdl-4)."""

from __future__ import annotations

import uuid

import orjson

from app.clock import micros_to_instant
from app.store.subscriptions import Event, Subscription

STATUS_PROFILE = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
_METHOD = {"available": ("POST", "201"), "changed": ("PUT", "200"), "removed": ("DELETE", "204")}


def status(sub: Subscription, base_url: str, kind: str, events: list[Event], content: str, status: str) -> dict:
    """The SubscriptionStatus `Parameters` of a notification (or of `$status`, kind query-status)."""
    parameters: list[dict] = [
        {"name": "subscription", "valueReference": {"reference": f"{base_url}/Subscription/{sub.id}"}},
        {"name": "topic", "valueCanonical": sub.topic},
        {"name": "status", "valueCode": status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(sub.events)},
    ]
    for event in events:
        parts: list[dict] = [
            {"name": "event-number", "valueString": str(event.number)},
            {"name": "timestamp", "valueInstant": micros_to_instant(event.recorded)},
        ]
        if content != "empty":
            parts.append({"name": "focus", "valueReference": {"reference": f"{base_url}/ImagingStudy/{event.study}"}})
        parameters.append({"name": "notification-event", "part": parts})
    if status == "error" and sub.error:
        parameters.append({"name": "error", "valueCodeableConcept": {"text": sub.error}})
    return {"resourceType": "Parameters", "meta": {"profile": [STATUS_PROFILE]}, "parameter": parameters}


def notification(
    sub: Subscription,
    base_url: str,
    kind: str,
    events: list[Event],
    content: str,
    resources: dict[str, bytes],
    now: int,
) -> dict:
    """The Bundle to send; `resources` holds the current ImagingStudy of each event's study the
    subscriber may see in full (`full-resource` only; a removed study has none)."""
    state = "active" if kind != "handshake" else "requested"
    entries: list[dict] = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": status(sub, base_url, kind, events, content, state),
            "request": {"method": "GET", "url": f"{base_url}/Subscription/{sub.id}/$status"},
            "response": {"status": "200"},
        }
    ]
    if content != "empty":
        for event in events:
            method, code = _METHOD[event.kind]
            entry: dict = {"fullUrl": f"{base_url}/ImagingStudy/{event.study}"}
            if content == "full-resource" and event.study in resources and event.kind != "removed":
                entry["resource"] = orjson.Fragment(resources[event.study])
            entry["request"] = {
                "method": method,
                "url": f"ImagingStudy/{event.study}" if method != "POST" else "ImagingStudy",
            }
            entry["response"] = {"status": code}
            entries.append(entry)
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "history",
        "timestamp": micros_to_instant(now),
        "entry": entries,
    }


def shown(sub: Subscription, content: bytes) -> bool:
    """Whether a `full-resource` notification may carry this study: when the subscription is
    narrowed to a patient (a token bound to a patient must narrow it so), only while the study is
    that patient's; a study that moved to another patient is then sent as id-only."""
    patients = {value for name, value in sub.filters if name == "patient"}
    if not patients:
        return True
    subject = orjson.loads(content).get("subject", {}).get("reference", "")
    return subject.startswith("Patient/") and subject[len("Patient/") :] in patients
