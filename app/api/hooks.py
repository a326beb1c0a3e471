"""Where security and on-demand plug into the request path, as interceptors do in other FHIR
servers: routes call the hooks, never the rooms behind them.

- the Guard says what the request may see: it refuses a read or search (403/404), narrows a
  search to what is visible, and trims what a served resource says about others
  (app/security/scope.py registers it);
- before-search hooks run before the first page of a search (on-demand fetching,
  app/sync/ondemand.py; the audit trail storing this process's events before it is searched);
- the record of what a response served (which resources, and the stored JSON of the studies
  among them), which the audit hook reads after the route.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from flask import g

from app.search.query import SearchQuery


class Guard(Protocol):
    """What a request may see; asked by the routes before they read the store."""

    def before_read(self, rtype: str, rid: str) -> None:
        """Refuse (FhirError) a read the request may not make: 403 without a scope, 404 outside
        what it may see, so a read cannot tell whether another patient's resource exists."""
        ...

    def before_search(self, rtype: str) -> None:
        """Refuse (403) a search of `rtype` the request may not make at all, before it is parsed."""
        ...

    def restrict(self, query: SearchQuery) -> None:
        """Refuse a parsed search the request may not make, or narrow it (`query.restrictions`)."""
        ...

    def version_visible(self, rtype: str, content: bytes) -> bool:
        """Whether an older version of a visible resource may be shown too."""
        ...

    def shown(self, rtype: str, content: bytes) -> bytes:
        """What of a visible resource (stored JSON) the request may see: every resource a route
        serves passes through here, also included ones and older versions."""
        ...

    def binding(self) -> str:
        """A fingerprint of who asks, mixed into paging links so one client's links are not another's."""
        ...

    def fetchable_identifiers(self) -> set[tuple[str, str]] | None:
        """(system, value) of the patients an archive may be asked about for this request; None: any."""
        ...

    def sees_operations(self) -> bool:
        """Whether the request may see how the server runs (errors naming the archives' addresses)."""
        ...


class OpenGuard:
    """A server without access control: everything is visible (until security registers its Guard)."""

    def before_read(self, rtype: str, rid: str) -> None:
        return None

    def before_search(self, rtype: str) -> None:
        return None

    def restrict(self, query: SearchQuery) -> None:
        return None

    def version_visible(self, rtype: str, content: bytes) -> bool:
        return True

    def shown(self, rtype: str, content: bytes) -> bytes:
        return content

    def binding(self) -> str:
        return ""

    def fetchable_identifiers(self) -> set[tuple[str, str]] | None:
        return None

    def sees_operations(self) -> bool:
        return True


@dataclass(frozen=True)
class BulkGrant:
    """What a Bulk Data request may export (SMART Backend Services, app/security/bulk.py): who
    owns its jobs (only that client may poll, download or cancel them; "" in open mode) and, per
    served type it may read, None (all of it) or its granular scopes' parameters, ORed."""

    owner: str
    types: dict[str, list[list[tuple[str, str]]] | None]


def open_bulk_grant() -> BulkGrant:
    """A server without access control: every served type, no owner."""
    from app.search.params import RESOURCE_TYPES

    return BulkGrant("", dict.fromkeys(RESOURCE_TYPES))


@dataclass(frozen=True)
class SubscriptionGrant:
    """What a request may do with Subscriptions (SMART scopes on the Subscription type,
    app/security/subscriptions.py): who owns the subscriptions it creates and sees (only that
    client and user may read, search and delete them; "" in open mode), the patient its token
    is bound to (None: not bound), and its SMART v2 permissions on Subscription ("c", "r", "s",
    "d"); whether its scopes let it read any ImagingStudy it may be notified of (a
    `full-resource` payload carries the study only then, else `id-only`)."""

    owner: str
    patient: str | None
    permissions: frozenset[str]
    reads_studies: bool = False


def open_subscription_grant() -> SubscriptionGrant:
    """A server without access control: every permission, no owner, no patient."""
    return SubscriptionGrant("", None, frozenset("crsd"), reads_studies=True)


#: a hook run before the first page of a search is read: it may fetch, flush or refuse (FhirError)
BeforeSearch = Callable[[SearchQuery, Guard], None]


@dataclass
class Hooks:
    guard: Guard = field(default_factory=OpenGuard)
    before_search: list[BeforeSearch] = field(default_factory=list)
    #: what the request's client may export, and who it is (security registers its own)
    bulk_grant: Callable[[], BulkGrant] = open_bulk_grant
    #: what the request's client may do with Subscriptions, and who it is (security registers its own)
    subscription_grant: Callable[[], SubscriptionGrant] = open_subscription_grant

    def run_before_search(self, query: SearchQuery) -> None:
        for hook in self.before_search:
            hook(query, self.guard)


@dataclass
class Served:
    """What one response carried: (type, id) of each resource, and the stored JSON of the
    ImagingStudies among them by id (their patients are read off it, not searched for)."""

    returned: list[tuple[str, str]] = field(default_factory=list)
    contents: dict[str, bytes] = field(default_factory=dict)


def note_served(returned: list[tuple[str, str]], contents: dict[str, bytes] | None = None) -> None:
    g.served = Served(returned, contents or {})


def served() -> Served:
    """What the route noted it served; nothing if it served nothing (or failed first)."""
    return g.get("served") or Served()
