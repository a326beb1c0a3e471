"""Topic-based Subscriptions in the store (table `subscription`), shared by every API node.

Each row keeps the Subscription as it is served, plus the columns that searches, `$status`
(Subscriptions R5 Backport IG v1.1.0, OperationDefinition backport-subscription-status) and the
ownership checks read: a client sees only the subscriptions it created.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Engine

_COLUMNS = "id, owner, status, topic, endpoint, resource, created, events, error"


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


def _row(row: tuple) -> Subscription:
    values = list(row)
    values[5] = bytes(values[5])
    return Subscription(*values)


def create(engine: Engine, sub: Subscription) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                f"INSERT INTO subscription ({_COLUMNS}) "
                "VALUES (:id, :owner, :status, :topic, :endpoint, :resource, :created, :events, :error)"
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
    """Delete the owner's subscription; False if it has none by that id."""
    with engine.begin() as conn:
        return (
            conn.execute(
                text("DELETE FROM subscription WHERE id = :id AND owner = :owner"), {"id": sub_id, "owner": owner}
            ).rowcount
            == 1
        )
