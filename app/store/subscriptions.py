"""Topic-based Subscriptions in the store (table `subscription`), shared by every API node.

Each row keeps the Subscription as it is served, plus the columns that searches, `$status`
(Subscriptions R5 Backport IG v1.1.0, OperationDefinition backport-subscription-status) and the
ownership checks read: a client sees only the subscriptions it created.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.engine import Engine

_COLUMNS = (
    "id, owner, status, topic, endpoint, resource, created, events, error, content, filters, delivered, node, "
    "lease_until, failures, next_try, last_sent, heartbeat, may_read"
)
#: the statuses under which events are recorded (R4 subscription-status; `off` records none)
LIVE = ("requested", "active", "error")


@dataclass(frozen=True)
class Subscription:
    id: str
    owner: str
    status: str
    topic: str
    endpoint: str
    resource: bytes
    created: int
    events: int
    error: str | None
    content: str
    #: (name, value) pairs, ANDed (app/fhir/topics.py)
    filters: tuple[tuple[str, str], ...]
    delivered: int = 0
    node: str | None = None
    lease_until: int | None = None
    failures: int = 0
    next_try: int = 0
    last_sent: int = 0
    heartbeat: int | None = None
    may_read: int = 0


def _row(row: tuple) -> Subscription:
    values = list(row)
    values[5] = bytes(values[5])
    values[10] = tuple((name, value) for name, value in orjson.loads(bytes(values[10])))
    return Subscription(*values)


def create(engine: Engine, sub: Subscription) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO subscription ({_COLUMNS}) "
                "VALUES (:id, :owner, :status, :topic, :endpoint, :resource, :created, :events, :error, :content, "
                ":filters, :delivered, :node, :lease_until, :failures, :next_try, :last_sent, :heartbeat, :may_read)"
            ),
            {
                "id": sub.id,
                "owner": sub.owner,
                "status": sub.status,
                "topic": sub.topic,
                "endpoint": sub.endpoint,
                "resource": sub.resource,
                "created": sub.created,
                "events": sub.events,
                "error": sub.error,
                "content": sub.content,
                "filters": orjson.dumps([list(pair) for pair in sub.filters]),
                "delivered": sub.delivered,
                "node": sub.node,
                "lease_until": sub.lease_until,
                "failures": sub.failures,
                "next_try": sub.next_try,
                "last_sent": sub.last_sent,
                "heartbeat": sub.heartbeat,
                "may_read": sub.may_read,
            },
        )


def get(engine: Engine, sub_id: str) -> Subscription | None:
    with engine.connect() as conn:
        row = conn.execute(text(f"SELECT {_COLUMNS} FROM subscription WHERE id = :id"), {"id": sub_id}).first()
    return _row(tuple(row)) if row is not None else None


def owned(
    engine: Engine,
    owner: str,
    ids: Sequence[str] | None = None,
    statuses: Sequence[str] | None = None,
    endpoints: Sequence[str] | None = None,
) -> list[Subscription]:
    """The owner's subscriptions in id order, narrowed (each list ORed, the lists ANDed) to
    those ids, statuses and channel endpoints when given."""
    where = ["owner = :owner"]
    params: dict = {"owner": owner}
    expanding: list = []
    for column, values in (("id", ids), ("status", statuses), ("endpoint", endpoints)):
        if values is not None:
            where.append(f"{column} IN :{column}s")
            params[f"{column}s"] = list(values)
            expanding.append(bindparam(f"{column}s", expanding=True))
    query = text(f"SELECT {_COLUMNS} FROM subscription WHERE {' AND '.join(where)} ORDER BY id")
    if expanding:
        query = query.bindparams(*expanding)
    with engine.connect() as conn:
        return [_row(tuple(row)) for row in conn.execute(query, params)]


def remove(engine: Engine, sub_id: str, owner: str) -> bool:
    """Delete the owner's subscription and its events; False if it has none by that id."""
    with engine.begin() as conn:
        gone = (
            conn.execute(
                text("DELETE FROM subscription WHERE id = :id AND owner = :owner"), {"id": sub_id, "owner": owner}
            ).rowcount
            == 1
        )
        if gone:
            conn.execute(text("DELETE FROM subscription_event WHERE subscription = :id"), {"id": sub_id})
        return gone


@dataclass(frozen=True)
class Event:
    number: int
    recorded: int
    kind: str
    study: str


def events(engine: Engine, sub_id: str, since: int, until: int, limit: int) -> list[Event]:
    """The subscription's events numbered `since`..`until` (inclusive), at most `limit`, in order."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT number, recorded, kind, study FROM subscription_event WHERE subscription = :id "
                "AND number >= :since AND number <= :until ORDER BY number LIMIT :limit"
            ),
            {"id": sub_id, "since": since, "until": until, "limit": limit},
        ).all()
    return [Event(*row) for row in rows]


def _matches(sub: Subscription, kind: str, recorded: int, keys: dict[str, list[str]]) -> bool:
    if not sub.topic.endswith(f"/SubscriptionTopic/imagingstudy-{kind}") or recorded < sub.created:
        return False
    return all(value in keys.get(name, ()) for name, value in sub.filters)


def dispatch(engine: Engine, limit: int = 500) -> int:
    """Hand the oldest recorded study changes (app/store/study_events.py) to the live
    subscriptions they match, each its next event number, and delete them: all in one
    transaction, so a change becomes each matching subscription's event exactly once. On
    PostgreSQL, nodes dispatching at once skip each other's changes (FOR UPDATE SKIP LOCKED);
    SQLite has one writer at a time. Returns how many changes were handed on (0 also when
    another node took them first)."""
    try:
        return _dispatch(engine, limit)
    except _Lost:  # rolled back: nothing of it was written
        return 0


class _Lost(Exception):
    """Another node handed these changes on first."""


def _dispatch(engine: Engine, limit: int) -> int:
    lock = " FOR UPDATE SKIP LOCKED" if engine.dialect.name == "postgresql" else ""
    with engine.begin() as conn:
        changes = conn.execute(
            text(f"SELECT id, recorded, kind, study, keys FROM study_change ORDER BY id LIMIT :limit{lock}"),
            {"limit": limit},
        ).all()
        if not changes:
            return 0
        # deleting them first is the claim: a node that finds fewer left than it read lost a race
        # to another (SQLite reads outside the write lock) and leaves them to it
        taken = conn.execute(
            text("DELETE FROM study_change WHERE id IN :ids").bindparams(bindparam("ids", expanding=True)),
            {"ids": [row[0] for row in changes]},
        ).rowcount
        if taken != len(changes):
            raise _Lost
        live = [
            _row(tuple(row))
            for row in conn.execute(
                text(f"SELECT {_COLUMNS} FROM subscription WHERE status IN :live ORDER BY id").bindparams(
                    bindparam("live", expanding=True)
                ),
                {"live": list(LIVE)},
            )
        ]
        for _change, recorded, kind, study, keys in changes:
            found = orjson.loads(bytes(keys))
            for sub in live:
                if not _matches(sub, kind, recorded, found):
                    continue
                conn.execute(text("UPDATE subscription SET events = events + 1 WHERE id = :id"), {"id": sub.id})
                number = conn.execute(
                    text("SELECT events FROM subscription WHERE id = :id"), {"id": sub.id}
                ).scalar_one()
                conn.execute(
                    text(
                        "INSERT INTO subscription_event (subscription, number, recorded, kind, study) "
                        "VALUES (:sub, :number, :recorded, :kind, :study)"
                    ),
                    {"sub": sub.id, "number": number, "recorded": recorded, "kind": kind, "study": study},
                )
        return len(changes)


#: a live subscription with something to send now that no other node holds a claim on
_DUE = (
    "status IN ('requested', 'active', 'error') AND next_try <= :now "
    "AND (lease_until IS NULL OR lease_until < :now OR node = :node) "
    "AND (status = 'requested' OR last_sent = 0 OR delivered < events "
    "OR (heartbeat IS NOT NULL AND last_sent + heartbeat * 1000000 <= :now))"
)


def due(engine: Engine, node: str, now: int, lease_micros: int, limit: int = 50) -> list[Subscription]:
    """Claim, for `node` until `now + lease_micros`, the live subscriptions that have something
    to send now: a handshake (status requested), events not yet acknowledged, or a heartbeat
    due; none another node holds a claim on, none waiting out a retry's backoff. One
    conditional UPDATE per subscription, so two nodes never send for the same one at once."""
    with engine.connect() as conn:
        candidates = conn.execute(
            text(f"SELECT id FROM subscription WHERE {_DUE} ORDER BY next_try, id LIMIT :limit"),
            {"now": now, "node": node, "limit": limit},
        ).all()
    claimed = []
    for (sub_id,) in candidates:
        with engine.begin() as conn:
            taken = conn.execute(
                # the condition again: another node may have sent it meanwhile
                text(f"UPDATE subscription SET node = :node, lease_until = :until WHERE id = :id AND {_DUE}"),
                {"node": node, "until": now + lease_micros, "id": sub_id, "now": now},
            ).rowcount
        if taken == 1:
            found = get(engine, sub_id)
            if found is not None:
                claimed.append(found)
    return claimed


def sent(engine: Engine, sub_id: str, node: str, now: int, delivered: int) -> bool:
    """A notification was acknowledged (2xx): events up to `delivered` are done, the subscription
    is active (again), its claim is released. False if the claim was lost meanwhile."""
    with engine.begin() as conn:
        return (
            conn.execute(
                text(
                    "UPDATE subscription SET status = 'active', error = NULL, failures = 0, next_try = 0, "
                    "last_sent = :now, lease_until = NULL, delivered = CASE WHEN delivered > :delivered "
                    "THEN delivered ELSE :delivered END WHERE id = :id AND node = :node AND status <> 'off'"
                ),
                {"now": now, "delivered": delivered, "id": sub_id, "node": node},
            ).rowcount
            == 1
        )


def failed(engine: Engine, sub_id: str, node: str, next_try: int, why: str, error_after: int, handshake: bool) -> None:
    """A send failed: count it, wait until `next_try`, and mark the subscription `error` (with
    why) after `error_after` failures in a row, or at once when its handshake failed (IG
    "Handshake": a server MAY retry; the subscription is in error until it succeeds)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE subscription SET failures = failures + 1, next_try = :next_try, lease_until = NULL, "
                "status = CASE WHEN :handshake OR failures + 1 >= :after THEN 'error' ELSE status END, "
                "error = CASE WHEN :handshake OR failures + 1 >= :after THEN :why ELSE error END "
                "WHERE id = :id AND node = :node AND status <> 'off'"
            ),
            {
                "next_try": next_try,
                "why": why,
                "after": error_after,
                "handshake": handshake,
                "id": sub_id,
                "node": node,
            },
        )


def any_live(engine: Engine) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(
                text("SELECT 1 FROM subscription WHERE status IN ('requested', 'active', 'error') LIMIT 1")
            ).first()
            is not None
        )
