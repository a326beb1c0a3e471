"""What the request's Access may see, enforced before any query runs.

`restrictions()` turns the Access into one `Restriction` per resource type: the patient
compartment (for a patient-context token) and the SMART v2 granular scopes (e.g.
`patient/ImagingStudy.rs?modality=MR`: its parameters ANDed with the search, several
such scopes of one type ORed). The search SQL applies them to the matches, to every chain
and `_has`, and to every include, so no path of a search reaches a resource outside them;
a read of such a resource answers 404, as if it did not exist. What is served of a visible
Patient is trimmed to links inside the compartment (`shown`).

Endpoint is not in the Patient compartment (FHIR R4 CompartmentDefinition): under a patient
context an Endpoint is visible when a study the token may see points at it, and an
ImagingStudy grant covers it, because apps must follow `ImagingStudy.endpoint` to the images.
"""

from __future__ import annotations

import hashlib

import orjson
from flask import g

from app.api.state import current_state
from app.errors import FhirError
from app.search.params import RESOURCE_TYPES
from app.search.query import ChainClause, Clause, Restriction, SearchClause, SearchError, SearchQuery, parse_search
from app.security import operators
from app.security.access import READ, SEARCH, Access, ScopeGrant, current_access
from app.store.patients import identifiers_of, linked_patients, links_within
from app.store.search_sql import visible_ids


def compartment(access: Access) -> tuple[str, ...] | None:
    """The Patient ids a patient-context access sees (None: no compartment); once per request."""
    if not access.in_patient_context or access.patient is None:
        return None
    if "compartment" not in g:
        state = current_state()
        g.compartment = linked_patients(state.reader, access.patient, state.base_url)
    return g.compartment


def _grants(access: Access, rtype: str, interaction: str) -> list[ScopeGrant | None]:
    grants = [grant for grant in access.grants if grant.covers(rtype, interaction)]
    if rtype == "Endpoint" and not grants and any(grant.covers("ImagingStudy", interaction) for grant in access.grants):
        return [None]  # reached through the studies: an Endpoint grant without narrowing
    return grants


def allows(access: Access, rtype: str, interaction: str) -> bool:
    if access.open:
        return True
    key = ("allows", rtype, interaction)  # once per token (Access.derived), not per request
    if key not in access.derived:
        access.derived[key] = bool(_grants(access, rtype, interaction))
    return access.derived[key]


def _narrowing(rtype: str, grant: ScopeGrant) -> tuple[SearchClause, ...] | None:
    """The clauses of one granular scope on `rtype`, or None when it cannot apply to it
    (a parameter unknown for the type, or not a filter): such a scope grants nothing."""
    if not grant.narrowing:
        return ()
    state = current_state()
    try:
        parsed = parse_search(
            rtype,
            list(grant.narrowing),
            zone=state.config.timezone,
            base_url=state.base_url,
            default_count=1,
            max_count=1,
            strict=True,
        )
    except SearchError:
        return None
    if len(parsed.clauses) != len(grant.narrowing):
        return None  # result parameters (_count, _include…) narrow nothing
    return tuple(parsed.clauses)


def restrictions(interaction: str = SEARCH) -> dict[str, Restriction]:
    """Per resource type, what this request may see with `interaction` (empty: everything)."""
    access = current_access()
    if access.open:
        return {}
    cache = g.setdefault("restrictions", {})
    if interaction in cache:
        return cache[interaction]
    patients = compartment(access)
    if patients is None:  # then they follow from the scopes alone: worked out once per set of grants
        derived = access.derived
        key = ("restrictions", interaction)
        if key not in derived:
            derived[key] = _restrictions(access, None, interaction)
        cache[interaction] = derived[key]
        return cache[interaction]
    cache[interaction] = _restrictions(access, patients, interaction)
    return cache[interaction]


def _restrictions(access: Access, patients: tuple[str, ...] | None, interaction: str) -> dict[str, Restriction]:
    out: dict[str, Restriction] = {}
    for rtype in RESOURCE_TYPES:
        grants = _grants(access, rtype, interaction)
        alternatives: list = []
        unnarrowed = False
        for grant in grants:
            clauses = () if grant is None else _narrowing(rtype, grant)
            if clauses == ():
                unnarrowed = True
            elif clauses is not None:
                alternatives.append(clauses)
        if not unnarrowed and not alternatives:
            out[rtype] = Restriction(deny=True)
        elif patients is not None or not unnarrowed:
            out[rtype] = Restriction(patients, None if unnarrowed else tuple(alternatives))
    return out


def require(rtype: str, interaction: str) -> None:
    """403 before any query when no scope of the token covers this type and interaction."""
    access = current_access()
    limit = restrictions(interaction).get(rtype)
    if not allows(access, rtype, interaction) or (limit is not None and limit.deny):
        verb = "read" if interaction == READ else "search"
        raise FhirError(403, "forbidden", f"the access token has no scope to {verb} {rtype}")


def _named_patients(rtype: str, clause: SearchClause) -> list[str]:
    """Patients a search names explicitly: `patient=`/`subject=` on ImagingStudy (also as
    `patient._id=`), `_id=` and `link=` on Patient (also as `patient.link=`: which record is
    linked to another patient is that patient's business)."""
    if (
        isinstance(clause, ChainClause)
        and rtype == "ImagingStudy"
        and clause.target == "Patient"
        and clause.param.name in ("patient", "subject")
    ):
        return _named_patients("Patient", clause.inner)
    if not isinstance(clause, Clause) or clause.modifier is not None:
        return []
    if rtype == "ImagingStudy" and clause.param.name in ("patient", "subject") and clause.kind == "reference":
        return [rid for target, rid in clause.values if target in (None, "Patient") and rid]
    if rtype == "Patient" and clause.param.name == "_id":
        return [code for _, code in clause.values]
    if rtype == "Patient" and clause.param.name == "link" and clause.kind == "reference":
        return [rid for target, rid in clause.values if target in (None, "Patient") and rid]
    return []


def guard_search_type(rtype: str) -> None:
    """403 before the search is even parsed when the request may not search `rtype`: the audit
    trail only to a user- or system-level AuditEvent scope (it names every patient), never to
    a patient-context token."""
    if rtype == "AuditEvent":
        _require_trail()
        return
    require(rtype, SEARCH)


def _require_trail() -> None:
    access = current_access()
    if access.open:
        return
    if access.in_patient_context:
        raise FhirError(403, "forbidden", "the audit trail is not open to a patient-context access token")
    if not any(grant.context in ("user", "system") and grant.covers("AuditEvent", SEARCH) for grant in access.grants):
        raise FhirError(403, "forbidden", "searching AuditEvent needs a user- or system-level AuditEvent scope")


def restrict_search(query: SearchQuery) -> None:
    """A search that names a patient outside the compartment is refused with 403 (SMART
    Imaging Access), before the store is asked; otherwise its restrictions are set on it."""
    if query.rtype == "AuditEvent":
        return  # whoever may search the trail sees all of it
    access = current_access()
    patients = compartment(access)
    if patients is not None:
        outside = sorted({p for clause in query.clauses for p in _named_patients(query.rtype, clause)} - set(patients))
        if outside:
            raise FhirError(
                403, "forbidden", "the search names a patient outside the patient in context of the access token"
            )
        if query.rtype == "Patient" and any(_asks_links_exist(clause) for clause in query.clauses):
            # whether a record has links at all would count the ones trimmed away (`shown`)
            raise FhirError(403, "forbidden", "Patient?link:missing is not open to a patient-context access token")
    query.restrictions = restrictions(SEARCH)


def _asks_links_exist(clause: SearchClause) -> bool:
    return isinstance(clause, Clause) and clause.param.name == "link" and clause.modifier == "missing"


def visible(rtype: str, rid: str) -> bool:
    """Whether a read of the current `rtype/rid` may show it (scope checked before)."""
    limits = restrictions(READ)
    return not limits or bool(visible_ids(current_state().reader, rtype, [rid], limits))


def guard_read(rtype: str, rid: str) -> None:
    """403 without a scope for the type; 404 for a resource outside what the token may see,
    so a read cannot tell whether another patient's resource exists."""
    require(rtype, READ)
    if not visible(rtype, rid):
        raise FhirError(404, "not-found", f"{rtype}/{rid} is not known")


def version_visible(rtype: str, content: bytes) -> bool:
    """An older version of a visible study belongs to the compartment only if its subject does
    (a study can move to another patient when an archive corrects it)."""
    patients = compartment(current_access())
    if patients is None or rtype != "ImagingStudy":
        return True
    reference = (orjson.loads(content).get("subject") or {}).get("reference", "")
    return reference.startswith("Patient/") and reference[len("Patient/") :] in patients


def shown(rtype: str, content: bytes) -> bytes:
    """A Patient served under a patient context keeps only its links into the compartment: a
    record linked to the token's patient may link on to a record two hops away, which the
    token may not read and whose link would still tell that it exists and is the same person."""
    if rtype != "Patient":
        return content
    patients = compartment(current_access())
    if patients is None:
        return content
    return links_within(content, patients, current_state().base_url)


def fetchable_identifiers() -> set[tuple[str, str]] | None:
    """(system, value) identifiers an on-demand fetch may ask the archives about for this
    request: those of the compartment's stored Patients, or None (any) without a compartment."""
    patients = compartment(current_access())
    if patients is None:
        return None
    return identifiers_of(current_state().reader, patients)


def binding() -> str:
    """A fingerprint of who asks, mixed into paging links: one token's `next` link is not
    valid under another token (another patient, client or set of scopes)."""
    access = current_access()
    if access.open:
        return ""
    if "binding" not in access.derived:
        text = "\n".join([access.subject or "", access.client_id or "", access.patient or "", *sorted(access.scopes)])
        access.derived["binding"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return access.derived["binding"]


class ScopeGuard:
    """The Guard (app/api/hooks.py) that applies the request's Access to every read and search."""

    def before_read(self, rtype: str, rid: str) -> None:
        guard_read(rtype, rid)

    def before_search(self, rtype: str) -> None:
        guard_search_type(rtype)

    def restrict(self, query: SearchQuery) -> None:
        restrict_search(query)

    def version_visible(self, rtype: str, content: bytes) -> bool:
        return version_visible(rtype, content)

    def shown(self, rtype: str, content: bytes) -> bytes:
        return shown(rtype, content)

    def binding(self) -> str:
        return binding()

    def fetchable_identifiers(self) -> set[tuple[str, str]] | None:
        return fetchable_identifiers()

    def sees_operations(self) -> bool:
        return operators.sees_operations()
