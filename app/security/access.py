"""Who is asking and what they may see: one `Access` per request, set before any query runs.

The token check (SMART on FHIR) builds it from a validated token; open mode builds one that
sees everything. Everything downstream (scope checks, the patient compartment, audit) reads
it through `current_access()`, so none of them knows how the token was checked.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from flask import g

#: interactions a scope can grant, named as SMART v2 letters
READ = "r"
SEARCH = "s"


@dataclass(frozen=True)
class ScopeGrant:
    """One resource-level scope: `patient/ImagingStudy.rs?modality=MR` and the like.

    `context` is "patient", "user" or "system"; `resource` is a type or "*"; `interactions`
    holds READ and/or SEARCH (v1 `.read` grants both); `narrowing` holds the v2 granular
    search parameters as (name, value) pairs, empty when the scope is not narrowed.
    """

    context: str
    resource: str
    interactions: frozenset
    narrowing: tuple = ()

    def covers(self, resource_type: str, interaction: str) -> bool:
        return self.resource in ("*", resource_type) and interaction in self.interactions


@dataclass(frozen=True)
class Access:
    #: True when the server runs open (no token); such access sees everything
    open: bool
    #: who the token speaks for (`sub`, else `client_id`); for audit, never logged
    subject: str | None = None
    client_id: str | None = None
    #: the raw scope strings of the token, and the resource-level ones parsed
    scopes: tuple = ()
    grants: tuple = field(default_factory=tuple)
    #: the patient in context (a Patient id of this server), or None
    patient: str | None = None

    @property
    def in_patient_context(self) -> bool:
        return not self.open and self.patient is not None

    @functools.cached_property
    def derived(self) -> dict:
        """What follows from this access alone (app/security/scope.py: restrictions without a
        compartment, the paging fingerprint), worked out once: a token's Access is kept with it
        in the token cache, so once per token rather than per request."""
        return {}


OPEN = Access(open=True)


def set_access(access: Access) -> None:
    g.access = access


def current_access() -> Access:
    """The Access of this request; a request that never passed the token check sees nothing."""
    return g.get("access") or Access(open=False)
