"""The subscription topics this server offers, and the filters each takes (Subscriptions R5
Backport IG v1.1.0).

In R4 a topic is named only by its canonical URL: a Subscription's `criteria` holds it, and
its filters are `backport-filter-criteria` extensions on `criteria`, each a search-style
string `ImagingStudy?name=value` (IG, StructureDefinition backport-filter-criteria; several
are ANDed, IG StructureDefinition backport-subscription, `criteria.extension:filterCriteria`).
The canonicals live under the server's base (`[base]/SubscriptionTopic/<code>`); a server
announces them with `capabilitystatement-subscriptiontopic-canonical` extensions on the
Subscription entry of `CapabilityStatement.rest.resource` (IG "Workflow", topic discovery).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

FILTER_CRITERIA = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria"
TOPIC_CANONICAL = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
)


@dataclass(frozen=True)
class Topic:
    code: str
    #: what triggers a notification, as the CapabilityStatement and docs/subscriptions.md say it
    description: str


TOPICS = (
    Topic("imagingstudy-available", "an ImagingStudy became available: a study no archive held before was stored"),
    Topic(
        "imagingstudy-changed",
        "an ImagingStudy changed: a series was added, or its status or its patient changed",
    ),
    Topic("imagingstudy-removed", "an ImagingStudy was removed: no archive holds the study any more"),
)

#: the filters every topic takes (ImagingStudy search parameters of the same name), and what they match
FILTERS = {
    "patient": "the study's patient: Patient/<id> or <id>",
    "identifier": "the study's accession number or other identifier: [system|]value",
    "modality": "a modality of the study's series: [system|]code (DICOM CID 29 codes, e.g. MR)",
    "endpoint": "the archive (source) holding the study, by its Endpoint: Endpoint/<id> or <id>",
}


def topic_url(base_url: str, topic: Topic) -> str:
    return f"{base_url}/SubscriptionTopic/{topic.code}"


def topic_by_url(base_url: str, url: str) -> Topic | None:
    for topic in TOPICS:
        if topic_url(base_url, topic) == url:
            return topic
    return None


class FilterError(ValueError):
    """A filter criteria string this server does not take; the message says why."""


def parse_filter(text: str) -> list[tuple[str, str]]:
    """`ImagingStudy?patient=Patient/1&modality=MR` -> [("patient", "1"), ("modality", "MR")].

    The resource type before `?` must be ImagingStudy (the resource every topic is about);
    each name must be one of FILTERS, each value non-empty; references are kept as the id
    alone. Raises FilterError naming what is wrong."""
    rtype, question, query = text.partition("?")
    if not question or rtype != "ImagingStudy":
        raise FilterError(
            f"'{text[:80]}' is not of the form ImagingStudy?name=value (the topics are about ImagingStudy)"
        )
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs:
        raise FilterError(f"'{text[:80]}' names no filter")
    found = []
    for name, value in pairs:
        if name not in FILTERS:
            raise FilterError(f"'{name[:40]}' is not a filter of these topics (known: {', '.join(FILTERS)})")
        if not value:
            raise FilterError(f"filter '{name}' has no value")
        if name in ("patient", "endpoint"):
            prefix = "Patient/" if name == "patient" else "Endpoint/"
            if "/" in value:
                if not value.startswith(prefix):
                    raise FilterError(f"filter '{name}' must name a {prefix[:-1]} ({prefix}<id> or <id>)")
                value = value[len(prefix) :]
            if not value or "/" in value:
                raise FilterError(f"filter '{name}' must name a {prefix[:-1]} ({prefix}<id> or <id>)")
        found.append((name, value))
    return found


def capability_extensions(base_url: str) -> list[dict]:
    return [{"url": TOPIC_CANONICAL, "valueCanonical": topic_url(base_url, topic)} for topic in TOPICS]
