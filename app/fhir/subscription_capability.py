"""What the CapabilityStatement says of Subscriptions (Subscriptions R5 Backport IG v1.1.0): the
Subscription entry, with the topics announced by `capabilitystatement-subscriptiontopic-canonical`
extensions on it (IG "Workflow", topic discovery in R4: `rest.resource[Subscription].extension`)."""

from __future__ import annotations

from app.api.interactions import SUBSCRIPTION_CREATE, SUBSCRIPTION_DELETE, SUBSCRIPTION_READ, SUBSCRIPTION_SEARCH
from app.fhir.subscription_body import PROFILE
from app.fhir.topics import FILTERS, TOPICS, capability_extensions, topic_url

SUBSCRIPTION_SERVER = (
    "http://hl7.org/fhir/uv/subscriptions-backport/CapabilityStatement/backport-subscription-server-r4"
)
_STATUS = "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status"
_EVENTS = "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events"


def subscription_resource(base_url: str) -> dict:
    topics = "; ".join(f"{topic_url(base_url, t)}: {t.description}" for t in TOPICS)
    filters = "; ".join(f"{name}: {what}" for name, what in FILTERS.items())
    return {
        "extension": capability_extensions(base_url),
        "type": "Subscription",
        "profile": "http://hl7.org/fhir/StructureDefinition/Subscription",
        "supportedProfile": [PROFILE],
        "documentation": (
            "Topic-based Subscriptions (Subscriptions R5 Backport IG v1.1.0, R4 profile backport-subscription). "
            f"Topics: {topics}. Filters (backport-filter-criteria on Subscription.criteria, "
            f"'ImagingStudy?name=value', ANDed): {filters}. Channel rest-hook (http or https endpoint) with "
            "payload application/fhir+json and backport-payload-content empty, id-only or full-resource; "
            "channel.header, backport-heartbeat-period, backport-timeout and backport-max-count are kept. "
            "POST is the only create; a new Subscription is 'requested' until its endpoint answers the "
            "handshake with 2xx ('active'; 'error' otherwise, retried with backoff). Notifications are history "
            "Bundles, at least once and in event-number order per subscription; 'error' after repeated failures, "
            "'active' again once a notification is acknowledged. full-resource carries the study only when the "
            "creator's scopes let it read ImagingStudy without narrowing, else id-only. Creating needs a scope such as "
            "user/Subscription.c or system/Subscription.c, reading .r, searching and $status .s, deleting .d; a "
            "token bound to a patient may subscribe only with the filter patient=<its patient>. A Subscription is "
            "visible to the client and user that created it only."
        ),
        "interaction": [
            {"code": i.restful}
            for i in (SUBSCRIPTION_CREATE, SUBSCRIPTION_READ, SUBSCRIPTION_SEARCH, SUBSCRIPTION_DELETE)
        ],
        "searchParam": [
            {"name": "_id", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id", "type": "token"},
            {
                "name": "status",
                "definition": "http://hl7.org/fhir/SearchParameter/Subscription-status",
                "type": "token",
            },
            {
                "name": "url",
                "definition": "http://hl7.org/fhir/SearchParameter/Subscription-url",
                "type": "uri",
                "documentation": "the channel endpoint, exact",
            },
        ],
        "operation": [
            {
                "name": "status",
                "definition": _STATUS,
                "documentation": "GET [base]/Subscription/[id]/$status or [base]/Subscription/$status?id=&status=: "
                "a searchset Bundle of backport-subscription-status-r4 Parameters (type query-status).",
            },
            {
                "name": "events",
                "definition": _EVENTS,
                "documentation": "GET [base]/Subscription/[id]/$events?eventsSinceNumber=&eventsUntilNumber=&content=: "
                "past events by number as a history Bundle (status type query-event); needs Subscription .r.",
            },
        ],
    }
