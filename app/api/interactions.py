"""The interactions this server answers, named once: what each is in FHIR, which SMART
permission it needs and how the audit trail records it.

A route declares what it serves (`@serves(READ)`); security (which scope a request needs),
audit (AuditEvent.subtype and action, IHE Basic Audit Log Patterns) and the
CapabilityStatement read this table, never a route's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from flask import current_app, request


@dataclass(frozen=True)
class Interaction:
    #: how messages name it
    name: str
    #: the FHIR R4 restful-interaction code, where it is one (CapabilityStatement.rest.resource.interaction)
    restful: str | None = None
    #: the SMART v2 permission it needs on the type it names: "r" read, "s" search, "u" update;
    #: None: decided where the route checks it (the WADO-RS gateway asks the Guard)
    permission: str | None = None
    #: (AuditEvent.subtype code, AuditEvent.action) it is recorded with; None: not audited
    audit: tuple[str, str] | None = None
    #: answered without a token (what the server is, how to get a token, whether it is up)
    public: bool = False
    #: looks across every patient: refused to a token bound to one patient
    across_patients: bool = False
    #: the type whose scope an across-patients interaction needs (with `permission`)
    scoped_on: str = "Patient"
    #: a Bulk Data export request (SMART Backend Services: system-level scopes only)
    bulk: bool = False


CAPABILITIES = Interaction("metadata", restful="capabilities", public=True)
SMART_CONFIGURATION = Interaction(".well-known/smart-configuration", public=True)
HEALTH = Interaction("health", public=True)
READ = Interaction("read", "read", "r", ("read", "R"))
VREAD = Interaction("vread", "vread", "r", ("vread", "R"))
HISTORY_INSTANCE = Interaction("history-instance", "history-instance", "r", ("history-instance", "R"))
#: R (read) and E (execute: a search is a query), FHIR R4 AuditEvent.action
SEARCH_TYPE = Interaction("search-type", "search-type", "s", ("search-type", "E"))
#: SMART v2 grants type and system history with `s` (search), and they are audited like one
HISTORY_TYPE = Interaction("history-type", "history-type", "s", ("history-type", "E"))
#: every served type the token may search, each as its type history would show it (the route asks the Guard)
HISTORY_SYSTEM = Interaction("history-system", "history-system", None, ("history-system", "E"))
#: a batch Bundle (FHIR R4 http 3.1.0.11): each entry is checked and audited as the request it
#: stands for; the batch itself needs a token and is audited too
BATCH = Interaction("batch", "batch", None, ("batch", "E"))
#: FHIR R4 OperationDefinition Patient-match
PATIENT_MATCH = Interaction("Patient/$match", "operation", "s", across_patients=True)
#: WADO-RS through the gateway: a read of the study's images (PS3.18 10.4)
IMAGES = Interaction("WADO-RS", audit=("read", "R"))
#: linking two Patients writes both (Patient.link): an update, across patients
IDENTITY_REVIEW = Interaction("the identity review API", permission="u", across_patients=True)

#: a source's patients as a Group (Bulk Data Access IG v2.0.0): membership spans patients
GROUP_READ = Interaction("Group read", "read", "r", ("read", "R"), across_patients=True, scoped_on="Group")
GROUP_SEARCH = Interaction(
    "Group search", "search-type", "s", ("search-type", "E"), across_patients=True, scoped_on="Group"
)
#: Bulk Data export (IG v2.0.0): kick-off, status, output file download and cancel, each audited
EXPORT = Interaction("$export", "operation", audit=("operation", "E"), bulk=True)
EXPORT_STATUS = Interaction("$export status", audit=("operation", "R"), bulk=True)
EXPORT_FILE = Interaction("$export file", audit=("operation", "R"), bulk=True)
EXPORT_DELETE = Interaction("$export delete", audit=("operation", "D"), bulk=True)
#: topic-based Subscriptions (Subscriptions R5 Backport IG v1.1.0): the route checks the
#: Subscription scopes itself (app/fhir/subscriptions.py), each request is audited
SUBSCRIPTION_CREATE = Interaction("Subscription create", "create", audit=("create", "C"))
SUBSCRIPTION_READ = Interaction("Subscription read", "read", audit=("read", "R"))
SUBSCRIPTION_SEARCH = Interaction("Subscription search", "search-type", audit=("search-type", "E"))
SUBSCRIPTION_DELETE = Interaction("Subscription delete", "delete", audit=("delete", "D"))
SUBSCRIPTION_STATUS = Interaction("Subscription $status", "operation", audit=("operation", "E"))
SUBSCRIPTION_EVENTS = Interaction("Subscription $events", "operation", audit=("operation", "R"))

#: what every served resource type offers, as the CapabilityStatement lists it
TYPE_INTERACTIONS = (READ, VREAD, HISTORY_INSTANCE, HISTORY_TYPE, SEARCH_TYPE)
#: what the server offers at its base (CapabilityStatement.rest.interaction)
SYSTEM_INTERACTIONS = (HISTORY_SYSTEM, BATCH)

View = TypeVar("View", bound=Callable)


def serves(interaction: Interaction) -> Callable[[View], View]:
    """Declare the interaction a route answers (read by security and audit before and after it)."""

    def mark(view: View) -> View:
        view.interaction = interaction  # type: ignore[attr-defined]
        return view

    return mark


def current_interaction() -> Interaction | None:
    """The interaction the request's route serves; None for a path no route serves, or a route
    that declares none (it needs a token and grants nothing more)."""
    endpoint = request.endpoint
    if endpoint is None:
        return None
    return getattr(current_app.view_functions.get(endpoint), "interaction", None)
