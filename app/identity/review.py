"""What a person does with identity: see the queue, link, unlink, ask why.

The CLI (`imaging-facade identity …`) and the admin API (app/admin/identity.py) are thin
shells over these functions. A person's link or unlink is remembered as such
(`manual-link`, `manual-unlink`) and automatic matching never overrides it; either one
stores new versions of both Patients with or without their `seealso` Patient.link, and so
also starts or ends `ImagingStudy?patient=` finding the other record's studies.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from app.identity.features import features
from app.identity.reconcile import automatic_status
from app.identity.scoring import score
from app.identity.settings import IdentityConfig
from app.store import links
from app.store.patients import all_patient_ids
from app.store.repository import Store


class IdentityError(Exception):
    """A request about identity that cannot be done; the message says why (no patient data)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _both(conn: Connection, a: str, b: str) -> tuple[dict, dict]:
    if a == b:
        raise IdentityError("a Patient cannot be linked to itself")
    found = []
    for pid in (a, b):
        patient = links.stored_patient(conn, pid)
        if patient is None:
            raise IdentityError(f"Patient/{pid} is not known", 404)
        found.append(patient)
    return found[0], found[1]


def list_pairs(
    store: Store, status: str | None = "review", patient_id: str | None = None, limit: int = 1000
) -> list[dict]:
    """Scored pairs, best first: the review queue by default; status None for every pair."""
    if status is not None and status not in links.STATUSES:
        raise IdentityError(f"status must be one of {', '.join(links.STATUSES)}")
    with store.engine.connect() as conn:
        return [row.as_dict() for row in links.list_links(conn, status, patient_id, limit)]


def explain(store: Store, a: str, b: str, rules: IdentityConfig) -> dict:
    """The score of two Patients as they are now, feature by feature, and what is decided."""
    with store.engine.connect() as conn:
        first, second = _both(conn, a, b)
        row = links.get_link(conn, a, b)
    result = score(features(first, rules), features(second, rules))
    return {
        "patients": list(links.pair(a, b)),
        **result.as_dict(),
        "grade": result.grade(rules.auto_link, rules.review, rules.possible),
        "automatic": automatic_status(result.points, rules) or "none",
        "status": row.status if row else "none",
        "thresholds": {"auto_link": rules.auto_link, "review": rules.review},
    }


def _decide(store: Store, a: str, b: str, status: str, rules: IdentityConfig) -> dict:
    with store.engine.begin() as conn:
        first, second = _both(conn, a, b)
        result = score(features(first, rules), features(second, rules))
        row = links.get_link(conn, a, b)
        before = row is not None and row.status in links.LINKED
        links.put_link(conn, a, b, status, result.points, result.as_dict())
        if before != (status in links.LINKED):
            store.patients.refresh(conn, (a, b))
        decided = links.get_link(conn, a, b)
        assert decided is not None  # put just above, in this transaction
        return decided.as_dict()


def link(store: Store, a: str, b: str, rules: IdentityConfig) -> dict:
    """A person says the two are one: linked now and whatever scoring says later."""
    return _decide(store, a, b, "manual-link", rules)


def unlink(store: Store, a: str, b: str, rules: IdentityConfig) -> dict:
    """A person says the two are two people: unlinked now and never linked automatically."""
    return _decide(store, a, b, "manual-unlink", rules)


def rematch(store: Store, rules: IdentityConfig) -> int:
    """Score every Patient again (after the thresholds or namespace rules changed); returns how
    many Patients' links changed. A person's decisions stay as they are."""
    from app.identity.reconcile import reconcile_patient

    with store.engine.connect() as conn:
        ids = all_patient_ids(conn)
    changed: set[str] = set()
    for patient_id in ids:
        changed.update(reconcile_patient(store, patient_id, rules, force=True))
    return len(changed)
