"""Who may do what with Subscriptions (SMART App Launch v2 scopes on the Subscription type).

Creating a Subscription needs `c` on Subscription (`user/Subscription.c`, `system/Subscription.cruds`,
`patient/Subscription.c`, v1 `.write` or `.*`); reading `r`, searching and `$status` `s`,
deleting `d` (v1 `.read` grants `r` and `s`). A token bound to a patient may subscribe only to
its own patient's studies (app/fhir/subscriptions.py asks for that `patient` filter). A
subscription belongs to the client and user that created it: the owner is the token's
`client_id` and `sub` together, and only that owner reads, searches and deletes it.
"""

from __future__ import annotations

import re

from app.api.hooks import SubscriptionGrant
from app.security.access import READ, current_access

_CONTEXTS = ("patient", "user", "system")
_V2 = re.compile(r"^c?r?u?d?s?$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


def permissions(scopes: tuple[str, ...]) -> frozenset[str]:
    """The SMART v2 letters the raw scopes grant on Subscription (granular `?` narrowing has no
    meaning for Subscription and is not granted)."""
    found: set[str] = set()
    for scope in scopes:
        if "?" in scope:
            continue
        context, slash, rest = scope.partition("/")
        resource, dot, letters = rest.rpartition(".")
        if not slash or not dot or context not in _CONTEXTS or resource not in ("Subscription", "*"):
            continue
        if letters in _V1:
            found.update(_V1[letters])
        elif letters and _V2.match(letters):
            found.update(letters)
    return frozenset(found)


def grant() -> SubscriptionGrant:
    access = current_access()
    if access.open:
        return SubscriptionGrant("", None, frozenset("crsd"), reads_studies=True)
    owner = f"client:{access.client_id or ''}|sub:{access.subject or ''}"
    # a `full-resource` notification carries the whole study: only to a token that may read every
    # ImagingStudy it can be notified of, with no granular narrowing (a patient-bound token is
    # notified of its own patient's studies only, app/fhir/subscriptions.py)
    reads = any(g.covers("ImagingStudy", READ) and not g.narrowing for g in access.grants)
    return SubscriptionGrant(owner, access.patient, permissions(access.scopes), reads_studies=reads)
