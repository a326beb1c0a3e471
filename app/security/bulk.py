"""Who may use Bulk Data export (Bulk Data Access IG v2.0.0 with SMART Backend Services).

A Bulk Data client is a backend service: its token carries system-level scopes
(`system/*.rs`, `system/ImagingStudy.rs`, SMART v1 `system/*.read`). A token bound to a patient
(patient/ scopes, a patient in context) is refused with 403, and so is one with user-level
scopes alone: an export spans every patient. The export reads what those system scopes let the
client read, granular scopes included (`system/ImagingStudy.rs?modality=MR`); a `_type` naming
a type outside them is refused (app/fhir/bulk.py). Status requests, downloads and cancels are
the kick-off client's only: its jobs are owned by its client id.
"""

from __future__ import annotations

from app.api.hooks import BulkGrant
from app.api.interactions import Interaction
from app.search.params import RESOURCE_TYPES
from app.security import authorize
from app.security.access import READ, Access, current_access


def _system_grants(access: Access, rtype: str) -> list:
    return [g for g in access.grants if g.context == "system" and g.covers(rtype, READ)]


def enforce(access: Access, interaction: Interaction, realm: str) -> None:
    """403 before anything is read for a token that may not use Bulk Data at all."""
    if access.patient is not None or any(g.context == "patient" for g in access.grants):
        raise authorize.forbidden(
            realm, f"{interaction.name}: Bulk Data export is refused to a token bound to a patient"
        )
    if not any(_system_grants(access, rtype) for rtype in RESOURCE_TYPES):
        raise authorize.forbidden(
            realm,
            f"{interaction.name}: Bulk Data export needs system-level scopes (SMART Backend Services), "
            "such as system/*.rs or system/ImagingStudy.rs",
            scope="system/*.rs",
        )


def grant() -> BulkGrant:
    """The request's client and what it may export, from its system-level scopes."""
    access = current_access()
    if access.open:
        return BulkGrant("", dict.fromkeys(RESOURCE_TYPES))
    types: dict[str, list[list[tuple[str, str]]] | None] = {}
    for rtype in RESOURCE_TYPES:
        grants = _system_grants(access, rtype)
        if not grants:
            continue
        if any(not g.narrowing for g in grants):
            types[rtype] = None
        else:
            types[rtype] = [list(g.narrowing) for g in grants]
    owner = access.client_id or access.subject or ""
    return BulkGrant(f"client:{owner}", types)
