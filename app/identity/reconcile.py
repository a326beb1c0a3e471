"""The probabilistic half of identity: after a Patient is stored, find records of the same
person among the other Patients and link them, queue them for review, or leave them.

Runs when sync stores a Patient that is new or changed in what matching looks at (its
features' digest differs from the filed one), in one transaction with the Patient versions
its decisions make. Candidates come from the blocking keys (app.identity.features), so a
match costs a few index lookups and some dozens of scorings, whatever the store's size.

Decisions per pair (app.store.links statuses): at or above `auto_link` the pair is `linked`
and both Patients carry a `seealso` Patient.link; between `review` and `auto_link` it waits
in the `review` queue; below, an automatic decision is withdrawn. A person's decision
(`manual-link`, `manual-unlink`) is never changed by scoring: an unlinked pair stays
unlinked however alike the records become.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson
from sqlalchemy.engine import Connection

from app.identity.features import blocking_keys, features
from app.identity.scoring import Score, score
from app.identity.settings import IdentityConfig
from app.store import links
from app.store.repository import Store


def digest(feats: dict) -> str:
    return hashlib.sha256(orjson.dumps(feats, option=orjson.OPT_SORT_KEYS)).hexdigest()


def automatic_status(points: float, rules: IdentityConfig) -> str | None:
    if points >= rules.auto_link:
        return "linked"
    if points >= rules.review:
        return "review"
    return None


def decide(conn: Connection, a: str, b: str, result: Score, rules: IdentityConfig, row: links.LinkRow | None) -> bool:
    """Record the pair's new score and automatic status, given its current row (None if the
    pair was never scored); True if Patient.link of the two changes."""
    explanation = result.as_dict()
    if row is not None and row.status in links.MANUAL:
        links.put_link(conn, a, b, row.status, result.points, explanation, keep_decided=True)
        return False
    status = automatic_status(result.points, rules)
    was_linked = row is not None and row.status in links.LINKED
    if status is None:
        if row is not None:
            links.drop_link(conn, a, b)
        return was_linked
    links.put_link(
        conn, a, b, status, result.points, explanation, keep_decided=row is not None and row.status == status
    )
    return was_linked != (status in links.LINKED)


def reconcile_patient(store: Store, patient_id: str, rules: IdentityConfig, force: bool = False) -> list[str]:
    """Match one stored Patient against the others; returns the Patients whose links changed."""
    with store.engine.begin() as conn:
        return reconcile_in(conn, store, patient_id, rules, force)


@dataclass
class Pending:
    """A stored Patient whose features differ from the ones filed for it: matching has work."""

    patient_id: str
    features: dict
    digest: str


def pending(conn: Connection, patient_id: str, rules: IdentityConfig, force: bool = False) -> Pending | None:
    """Whether matching a stored Patient would do anything, found by reading alone.

    None when the Patient is not stored, or its features are the ones filed (a new study of
    a known patient, most often): matching would write nothing, so a sync need not open a
    savepoint for it.
    """
    found = links.stored_and_filed(conn, patient_id)
    if found is None:
        return None
    patient, filed = found
    feats = features(patient, rules)
    fingerprint = digest(feats)
    if not force and filed == fingerprint:
        return None
    return Pending(patient_id, feats, fingerprint)


def reconcile_in(
    conn: Connection, store: Store, patient_id: str, rules: IdentityConfig, force: bool = False
) -> list[str]:
    work = pending(conn, patient_id, rules, force)
    return reconcile_pending(conn, store, work, rules) if work is not None else []


def reconcile_pending(conn: Connection, store: Store, work: Pending, rules: IdentityConfig) -> list[str]:
    """File the Patient's new features and match it (see `pending`); the Patients whose links changed."""
    patient_id, feats, fingerprint = work.patient_id, work.features, work.digest
    links.file_patient(conn, patient_id, fingerprint, feats, blocking_keys(feats))
    if not rules.match_on_sync:
        return []
    found = links.candidates(conn, blocking_keys(feats), exclude=patient_id)
    # pairs decided before whose partner no key finds any more are scored again too
    known = {r.b if r.a == patient_id else r.a: r for r in links.links_of(conn, patient_id)}
    found.update(links.features_of(conn, [k for k in known if k not in found]))
    changed: set[str] = set()
    for other, other_feats in found.items():
        if decide(conn, patient_id, other, score(feats, other_feats), rules, known.get(other)):
            changed.update((patient_id, other))
    store.patients.refresh(conn, changed)
    return sorted(changed)
