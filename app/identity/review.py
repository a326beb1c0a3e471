"""What a person does with identity: see the queue, link, unlink, ask why.

The CLI (`imaging-facade identity …`) and the admin API (app/admin/identity.py) are thin
shells over these functions. A person's link or unlink is remembered as such
(`manual-link`, `manual-unlink`) and automatic matching never overrides it; either one
stores new versions of both Patients with or without their `seealso` Patient.link, and so
also starts or ends `ImagingStudy?patient=` finding the other record's studies.
"""

from __future__ import annotations

import base64

import orjson
from sqlalchemy.engine import Connection

from app.identity.features import features
from app.identity.reconcile import automatic_status
from app.identity.scoring import score
from app.identity.settings import IdentityConfig
from app.ids import valid_id
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


#: most pairs on one page of a listing
MAX_PAGE = 10000


def _cursor(status: str | None, patient_id: str | None, after: tuple[float, str, str]) -> str:
    """An opaque cursor: where the next page starts (the last pair's sort key) and the listing
    it belongs to, so that it cannot be replayed against another status or patient."""
    body = orjson.dumps({"v": 1, "s": status or "", "p": patient_id or "", "k": list(after)})
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


def _after(cursor: str, status: str | None, patient_id: str | None) -> tuple[float, str, str]:
    refused = IdentityError("'cursor' is not one this listing gave; list again without it")
    try:
        body = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:  # binascii.Error, orjson.JSONDecodeError and non-ASCII text all are
        raise refused from None
    if not isinstance(body, dict) or body.get("v") != 1:
        raise refused
    key = body.get("k")
    if not (
        isinstance(key, list)
        and len(key) == 3
        and isinstance(key[0], (int, float))
        and not isinstance(key[0], bool)
        and all(isinstance(k, str) and valid_id(k) for k in key[1:])
    ):
        raise refused
    if body.get("s") != (status or "") or body.get("p") != (patient_id or ""):
        raise IdentityError("'cursor' belongs to a listing of another status or patient")
    return float(key[0]), key[1], key[2]


def page_pairs(
    store: Store,
    status: str | None = "review",
    patient_id: str | None = None,
    limit: int = 1000,
    cursor: str | None = None,
    counted: bool = True,
) -> dict:
    """One page of scored pairs, best first (the review queue by default; status None for every
    pair): `pairs`, `total` (all pages together; None with `counted` False, for a caller that
    counted on the first page: a count reads the whole listing) and `next`, the cursor of the
    page after this one, or None on the last page. Following `next` from the first page meets
    every pair once."""
    if status is not None and status not in links.STATUSES:
        raise IdentityError(f"status must be one of {', '.join(links.STATUSES)}")
    if isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise IdentityError(f"'limit' must be a whole number from 1 to {MAX_PAGE}")
    after = _after(cursor, status, patient_id) if cursor is not None else None
    with store.engine.connect() as conn:
        total = links.count_links(conn, status, patient_id) if counted else None
        rows, more = links.page_links(conn, status, patient_id, limit, after)
    last = rows[-1] if rows else None
    following = _cursor(status, patient_id, (last.points, last.a, last.b)) if more and last else None
    return {"total": total, "pairs": [row.as_dict() for row in rows], "next": following}


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
