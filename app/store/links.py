"""Store side of patient identity: match features, blocking keys and link decisions.

Functions over an open Connection, so the identity step decides and writes in one
transaction with the Patient versions its decisions make (app/identity/reconcile.py).
Which links a Patient carries in `Patient.link` is read from here whenever the store
rebuilds a Patient (Store._refresh_patient).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Select, bindparam, delete, func, insert, or_, select, tuple_, update
from sqlalchemy.engine import Connection, Row
from sqlmodel import col

from app.clock import instant_now_ms
from app.store import tables as t

#: statuses under which both Patients carry a Patient.link to each other
LINKED = ("linked", "manual-link")
MANUAL = ("manual-link", "manual-unlink")
STATUSES = ("linked", "review", "manual-link", "manual-unlink")


@dataclass
class LinkRow:
    a: str
    b: str
    status: str
    points: float
    explanation: dict
    decided: int

    def as_dict(self) -> dict:
        return {
            "patients": [self.a, self.b],
            "status": self.status,
            "points": self.points,
            "explanation": self.explanation,
            "decided": self.decided,
        }


# statements a sync runs for every stored patient, built once (see app/store/repository.py)
_STORED_PATIENT = select(col(t.Resource.content)).where(
    col(t.Resource.rtype) == "Patient", col(t.Resource.id) == bindparam("key_patient")
)
_STORED_AND_FILED = (
    select(col(t.Resource.content), col(t.PatientMatch.digest))
    .select_from(t.Resource)
    .outerjoin(t.PatientMatch, col(t.PatientMatch.patient_id) == col(t.Resource.id))
    .where(col(t.Resource.rtype) == "Patient", col(t.Resource.id) == bindparam("key_patient"))
)
_UPDATE_MATCH = update(t.PatientMatch).where(col(t.PatientMatch.patient_id) == bindparam("key_patient"))
_UNBLOCK = delete(t.PatientBlock).where(col(t.PatientBlock.patient_id) == bindparam("key_patient"))
_LINKS_OF = select(t.PatientLink).where(
    or_(col(t.PatientLink.a) == bindparam("key_patient"), col(t.PatientLink.b) == bindparam("key_patient")),
    col(t.PatientLink.status).in_(bindparam("statuses", expanding=True)),
)


def pair(x: str, y: str) -> tuple[str, str]:
    return (x, y) if x < y else (y, x)


def _row(r: Row) -> LinkRow:
    return LinkRow(r.a, r.b, r.status, r.points, orjson.loads(r.explanation), r.decided)


def stored_patient(conn: Connection, patient_id: str) -> dict | None:
    content = conn.execute(_STORED_PATIENT, {"key_patient": patient_id}).scalar()
    return orjson.loads(content) if content is not None else None


def stored_and_filed(conn: Connection, patient_id: str) -> tuple[dict, str | None] | None:
    """A stored Patient and the digest of the features filed for it (None if none are), in one
    round trip; None if the Patient is not stored."""
    row = conn.execute(_STORED_AND_FILED, {"key_patient": patient_id}).first()
    return (orjson.loads(row.content), row.digest) if row is not None else None


def file_patient(conn: Connection, patient_id: str, digest: str, features: dict, keys: list[str]) -> None:
    """Keep a Patient's features and put it under exactly `keys`."""
    content = orjson.dumps(features)
    if conn.execute(_UPDATE_MATCH, {"key_patient": patient_id, "digest": digest, "features": content}).rowcount == 0:
        conn.execute(insert(t.PatientMatch), {"patient_id": patient_id, "digest": digest, "features": content})
    conn.execute(_UNBLOCK, {"key_patient": patient_id})
    if keys:
        conn.execute(insert(t.PatientBlock), [{"key": k, "patient_id": patient_id} for k in keys])


def unfile_patient(conn: Connection, patient_id: str) -> None:
    conn.execute(delete(t.PatientBlock).where(col(t.PatientBlock.patient_id) == patient_id))
    conn.execute(delete(t.PatientMatch).where(col(t.PatientMatch.patient_id) == patient_id))


def features_of(conn: Connection, patient_ids: list[str]) -> dict[str, dict]:
    if not patient_ids:
        return {}
    rows = conn.execute(
        select(col(t.PatientMatch.patient_id), col(t.PatientMatch.features)).where(
            col(t.PatientMatch.patient_id).in_(patient_ids)
        )
    )
    return {r.patient_id: orjson.loads(r.features) for r in rows}


#: most candidates scored for one patient: a key shared by more (a very common name with no
#: birth date) says little, and the other keys still find the real matches
MAX_CANDIDATES = 500


def candidates(conn: Connection, keys: list[str], exclude: str | None = None) -> dict[str, dict]:
    """Features of the patients filed under any of `keys` (but `exclude`)."""
    if not keys:
        return {}
    blocked = select(col(t.PatientBlock.patient_id)).where(col(t.PatientBlock.key).in_(keys))
    if exclude is not None:
        blocked = blocked.where(col(t.PatientBlock.patient_id) != exclude)
    rows = conn.execute(
        select(col(t.PatientMatch.patient_id), col(t.PatientMatch.features))
        .where(col(t.PatientMatch.patient_id).in_(blocked.distinct()))
        .limit(MAX_CANDIDATES)
    )
    return {r.patient_id: orjson.loads(r.features) for r in rows}


def get_link(conn: Connection, x: str, y: str) -> LinkRow | None:
    a, b = pair(x, y)
    r = conn.execute(select(t.PatientLink).where(col(t.PatientLink.a) == a, col(t.PatientLink.b) == b)).first()
    return _row(r) if r else None


def put_link(
    conn: Connection, x: str, y: str, status: str, points: float, explanation: dict, keep_decided: bool = False
) -> None:
    a, b = pair(x, y)
    now, _ = instant_now_ms()
    values = {"status": status, "points": float(points), "explanation": orjson.dumps(explanation)}
    if not keep_decided:
        values["decided"] = now
    where = (col(t.PatientLink.a) == a, col(t.PatientLink.b) == b)
    if conn.execute(update(t.PatientLink).where(*where).values(**values)).rowcount == 0:
        conn.execute(insert(t.PatientLink).values(a=a, b=b, **{"decided": now, **values}))


def drop_link(conn: Connection, x: str, y: str) -> None:
    a, b = pair(x, y)
    conn.execute(delete(t.PatientLink).where(col(t.PatientLink.a) == a, col(t.PatientLink.b) == b))


def links_of(conn: Connection, patient_id: str, statuses: Iterable[str] = STATUSES) -> list[LinkRow]:
    rows = conn.execute(_LINKS_OF, {"key_patient": patient_id, "statuses": list(statuses)})
    return [_row(r) for r in rows]


def linked_ids(conn: Connection, patient_id: str) -> list[str]:
    """The Patients `patient_id` carries a Patient.link to, sorted."""
    return sorted((r.b if r.a == patient_id else r.a) for r in links_of(conn, patient_id, LINKED))


#: a listing's order, best first: (points, a, b) descending is total, since (a, b) is the key,
#: and one index reads it backwards (ix_link_order, or ix_link_status within one status)
PAGE_ORDER = (col(t.PatientLink.points).desc(), col(t.PatientLink.a).desc(), col(t.PatientLink.b).desc())


def _listed(query: Select[Any], status: str | None, patient_id: str | None) -> Select[Any]:
    if status:
        query = query.where(col(t.PatientLink.status) == status)
    if patient_id:
        query = query.where(or_(col(t.PatientLink.a) == patient_id, col(t.PatientLink.b) == patient_id))
    return query


def count_links(conn: Connection, status: str | None = None, patient_id: str | None = None) -> int:
    """How many pairs a listing with these filters holds, all pages together."""
    query = _listed(select(func.count()).select_from(t.PatientLink), status, patient_id)
    return int(conn.execute(query).scalar_one())


def page_links(
    conn: Connection,
    status: str | None = None,
    patient_id: str | None = None,
    limit: int = 1000,
    after: tuple[float, str, str] | None = None,
) -> tuple[list[LinkRow], bool]:
    """Up to `limit` pairs in PAGE_ORDER that come after the pair whose sort key (points, a, b)
    is `after`, and whether more follow.

    Keyset paging: each page is an index range from where the last one stopped, so a page
    deep in a million pairs costs what the first one does, and a pair decided between two
    pages does not shift the pairs after it onto a page already read (as an OFFSET would)."""
    query = _listed(select(t.PatientLink), status, patient_id)
    if after is not None:
        sort_key = tuple_(col(t.PatientLink.points), col(t.PatientLink.a), col(t.PatientLink.b))
        query = query.where(sort_key < tuple_(*after))
    rows = [_row(r) for r in conn.execute(query.order_by(*PAGE_ORDER).limit(limit + 1))]
    return rows[:limit], len(rows) > limit


def iter_links(conn: Connection, status: str | None = None, page: int = 1000) -> Iterator[LinkRow]:
    """Every pair of a listing, in PAGE_ORDER, read a page at a time."""
    after = None
    while True:
        rows, more = page_links(conn, status, None, page, after)
        yield from rows
        if not more:
            return
        after = (rows[-1].points, rows[-1].a, rows[-1].b)


def forget_patient(conn: Connection, patient_id: str) -> None:
    """A Patient left the store: its automatic decisions and features go; a person's
    decisions stay (should it come back, they hold again)."""
    conn.execute(
        delete(t.PatientLink).where(
            or_(col(t.PatientLink.a) == patient_id, col(t.PatientLink.b) == patient_id),
            col(t.PatientLink.status).not_in(MANUAL),
        )
    )
    unfile_patient(conn, patient_id)
