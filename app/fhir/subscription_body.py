"""A Subscription a client POSTs, checked against the R4 profile of the Subscriptions R5
Backport IG v1.1.0 (StructureDefinition backport-subscription) and what this server offers.

- `criteria` is a topic's canonical URL (app/fhir/topics.py), its filters
  `backport-filter-criteria` extensions on `criteria`;
- `channel.type` is `rest-hook` with an http(s) `channel.endpoint`; `channel.payload` is the
  MIME type of notifications (application/fhir+json) and carries the `backport-payload-content`
  extension: empty, id-only or full-resource (IG, backport-payload-content; code system
  backport-content-code);
- `channel.header` entries are HTTP headers ("Name: value") sent with each notification;
- `channel` may carry `backport-heartbeat-period` (unsignedInt, seconds), `backport-timeout`
  (unsignedInt, seconds) and `backport-max-count` (positiveInt);
- `status` is `requested` (FHIR R4 Subscription: a client asks; the server decides), `reason`
  is required (R4 Subscription.reason 1..1); `end` is refused (a Subscription lasts until it
  is deleted).

Whatever is wrong is raised as a BodyError naming the element, for a 400 OperationOutcome.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from app.fhir.topics import FILTER_CRITERIA, FilterError, Topic, parse_filter, topic_by_url

_SD = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
PROFILE = f"{_SD}/backport-subscription"
PAYLOAD_CONTENT = f"{_SD}/backport-payload-content"
HEARTBEAT_PERIOD = f"{_SD}/backport-heartbeat-period"
TIMEOUT = f"{_SD}/backport-timeout"
MAX_COUNT = f"{_SD}/backport-max-count"
CONTENTS = ("empty", "id-only", "full-resource")
PAYLOAD_TYPES = ("application/fhir+json", "application/json")
#: RFC 9110 field-name (token) and a visible value without line breaks
_HEADER = re.compile(r"^([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\x20-\x7e\t]*)$")
#: headers the server sets itself on a notification
_RESERVED = {"content-type", "content-length", "host", "transfer-encoding", "connection"}


class BodyError(ValueError):
    """What is wrong with the Subscription, naming the element (FHIRPath-like)."""


@dataclass(frozen=True)
class Requested:
    topic: Topic
    topic_url: str
    filters: list[tuple[str, str]]
    endpoint: str
    content: str
    headers: list[tuple[str, str]]
    heartbeat: int | None
    timeout: int | None
    max_count: int | None


def _extensions(element: dict, where: str) -> dict[str, list]:
    found: dict[str, list] = {}
    extensions = element.get("extension", [])
    if not isinstance(extensions, list):
        raise BodyError(f"{where}.extension must be a list")
    for i, ext in enumerate(extensions):
        if not isinstance(ext, dict) or not isinstance(ext.get("url"), str):
            raise BodyError(f"{where}.extension[{i}] must have a url")
        found.setdefault(ext["url"], []).append(ext)
    return found


def _one_number(exts: dict[str, list], url: str, where: str, minimum: int) -> int | None:
    values = exts.get(url, [])
    if not values:
        return None
    name = url.rsplit("/", 1)[1]
    if len(values) > 1:
        raise BodyError(f"{where}: extension {name} may appear once")
    key = "valuePositiveInt" if minimum == 1 else "valueUnsignedInt"
    value = values[0].get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BodyError(f"{where}: extension {name} needs {key} (an integer of at least {minimum})")
    return value


def _endpoint(channel: dict) -> str:
    endpoint = channel.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise BodyError("Subscription.channel.endpoint is required for a rest-hook channel")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BodyError("Subscription.channel.endpoint must be an absolute http or https URL")
    if parts.username or parts.password:
        raise BodyError("Subscription.channel.endpoint may not hold credentials (send them in channel.header)")
    return endpoint


def _headers(channel: dict) -> list[tuple[str, str]]:
    headers = channel.get("header", [])
    if not isinstance(headers, list):
        raise BodyError("Subscription.channel.header must be a list of strings")
    found = []
    for i, header in enumerate(headers):
        match = _HEADER.match(header) if isinstance(header, str) else None
        if match is None:
            raise BodyError(f"Subscription.channel.header[{i}] must be an HTTP header 'Name: value'")
        if match.group(1).lower() in _RESERVED:
            raise BodyError(f"Subscription.channel.header[{i}]: the server sets {match.group(1)} itself")
        found.append((match.group(1), match.group(2).strip()))
    return found


def check(body: object, base_url: str) -> Requested:
    """The request the body makes, or BodyError."""
    if not isinstance(body, dict) or body.get("resourceType") != "Subscription":
        raise BodyError("the body must be a Subscription resource (resourceType 'Subscription')")
    if body.get("status") != "requested":
        raise BodyError("Subscription.status must be 'requested' (the server activates a subscription)")
    if not isinstance(body.get("reason"), str) or not body["reason"].strip():
        raise BodyError("Subscription.reason is required")
    if "end" in body:
        raise BodyError("Subscription.end is not supported here: DELETE the Subscription when it is no longer wanted")
    criteria = body.get("criteria")
    if not isinstance(criteria, str) or not criteria:
        raise BodyError("Subscription.criteria is required: the canonical URL of a topic")
    topic = topic_by_url(base_url, criteria)
    if topic is None:
        raise BodyError(
            f"Subscription.criteria: '{criteria[:120]}' is not a topic of this server (see the "
            "CapabilityStatement's Subscription entry)"
        )
    filters: list[tuple[str, str]] = []
    criteria_element = body.get("_criteria", {})
    if not isinstance(criteria_element, dict):
        raise BodyError("Subscription._criteria must be an element")
    for url, exts in _extensions(criteria_element, "Subscription._criteria").items():
        if url != FILTER_CRITERIA:
            raise BodyError(f"Subscription._criteria: extension '{url[:120]}' is not known here")
        for ext in exts:
            value = ext.get("valueString")
            if not isinstance(value, str):
                raise BodyError("Subscription._criteria: backport-filter-criteria needs valueString")
            try:
                filters.extend(parse_filter(value))
            except FilterError as err:
                raise BodyError(f"Subscription._criteria backport-filter-criteria: {err}") from None
    channel = body.get("channel")
    if not isinstance(channel, dict):
        raise BodyError("Subscription.channel is required")
    if channel.get("type") != "rest-hook":
        raise BodyError("Subscription.channel.type must be 'rest-hook' (the only channel this server sends on)")
    endpoint = _endpoint(channel)
    payload = channel.get("payload")
    if payload not in PAYLOAD_TYPES:
        raise BodyError(f"Subscription.channel.payload must be one of {', '.join(PAYLOAD_TYPES)}")
    payload_element = channel.get("_payload", {})
    if not isinstance(payload_element, dict):
        raise BodyError("Subscription.channel._payload must be an element")
    contents = _extensions(payload_element, "Subscription.channel._payload").get(PAYLOAD_CONTENT, [])
    if len(contents) != 1 or contents[0].get("valueCode") not in CONTENTS:
        raise BodyError(
            "Subscription.channel._payload needs one backport-payload-content extension with valueCode "
            f"{', '.join(CONTENTS)}"
        )
    channel_exts = _extensions(channel, "Subscription.channel")
    return Requested(
        topic=topic,
        topic_url=criteria,
        filters=filters,
        endpoint=endpoint,
        content=contents[0]["valueCode"],
        headers=_headers(channel),
        heartbeat=_one_number(channel_exts, HEARTBEAT_PERIOD, "Subscription.channel", 0),
        timeout=_one_number(channel_exts, TIMEOUT, "Subscription.channel", 0),
        max_count=_one_number(channel_exts, MAX_COUNT, "Subscription.channel", 1),
    )
