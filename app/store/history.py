"""The API's reads of history (FHIR R4 http 3.1.0.12): the versions of one resource, of one
type or of the whole server, newest first, a page at a time.

Every version ever served is a row of `resource_version`, a deletion too (its content is
DELETION, app/store/resources.py), so one table answers all three levels. A page continues
after the last version of the one before (keyset paging, like search): instance history
by version, type and system history by (last_updated, rtype, id, version), each read along
an index (the primary key; `ix_version_type_time`; `ix_version_time`), never sorted whole.

`_since` keeps the versions created at or after an instant; `_at` those that were current at
some time in a period: created before it ends, and not replaced by a later version before
it starts (the next version, found by the primary key).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.search.query import Restriction
from app.store.reader import Reader
from app.store.search_sql import restriction_sql


@dataclass(frozen=True)
class Version:
    rtype: str
    rid: str
    version: int
    last_updated: int
    #: the stored JSON; empty for a deletion (DELETION, app/store/resources.py)
    content: bytes

    @property
    def deleted(self) -> bool:
        return not self.content


@dataclass(frozen=True)
class HistoryScope:
    """Which versions one history request lists (before paging)."""

    #: the type (type and instance history); None: every type of `types` (system history)
    rtype: str | None = None
    #: the resource (instance history)
    rid: str | None = None
    #: the types system history covers
    types: tuple[str, ...] = ()
    #: versions created at or after this instant (epoch micros)
    since: int | None = None
    #: versions current at some time in [low, high) (epoch micros)
    at: tuple[int, int] | None = None
    #: what the request may see of each type (app/security/scope.py), as search applies it
    restrictions: dict[str, Restriction] | None = None


@dataclass
class HistoryPage:
    versions: list[Version]
    has_more: bool
    #: where the next page starts (None: no more)
    cursor: list | None


def _where(scope: HistoryScope, params: list) -> str:
    conditions: list[str] = []
    if scope.rid is not None:
        assert scope.rtype is not None  # an instance has a type
        conditions.append("v.rtype = ? AND v.id = ?")
        params += [scope.rtype, scope.rid]
    elif scope.rtype is not None:
        conditions.append("v.rtype = ?")
        params.append(scope.rtype)
        visible = _visible(scope.rtype, scope.restrictions, params)
        if visible:
            conditions.append(visible)
    else:
        alternatives = []
        for rtype in scope.types:
            typed: list = [rtype]
            visible = _visible(rtype, scope.restrictions, typed)
            alternatives.append("(v.rtype = ?" + (f" AND {visible})" if visible else ")"))
            params += typed
        conditions.append("(" + (" OR ".join(alternatives) or "1 = 0") + ")")
    if scope.since is not None:
        conditions.append("v.last_updated >= ?")
        params.append(scope.since)
    if scope.at is not None:
        low, high = scope.at
        conditions.append(
            "v.last_updated < ? AND NOT EXISTS (SELECT 1 FROM resource_version n WHERE n.rtype = v.rtype "
            "AND n.id = v.id AND n.version > v.version AND n.last_updated <= ?)"
        )
        params += [high, low]
    return " AND ".join(conditions)


def _visible(rtype: str, restrictions: dict[str, Restriction] | None, params: list) -> str | None:
    """The request's restriction of `rtype` (search's, on `id`): the versions of the resources it
    may see now. A deleted resource is in no search, so its versions are in no restricted history."""
    return restriction_sql(rtype, restrictions, params) if restrictions else None


def read_page(reader: Reader, scope: HistoryScope, count: int, cursor: list | None) -> HistoryPage:
    """One page of at most `count` versions, newest first; `cursor` is the previous page's."""
    params: list = []
    where = _where(scope, params)
    if count == 0:
        return HistoryPage([], False, None)
    if scope.rid is not None:
        order, keys = "v.version DESC", ["v.version"]
    else:
        keys = ["v.last_updated", "v.rtype", "v.id", "v.version"]
        order = ", ".join(f"{key} DESC" for key in keys)
        if scope.rtype is not None:
            keys = keys[:1] + keys[2:]  # one type: its index orders by (last_updated, id, version)
            order = "v.last_updated DESC, v.id DESC, v.version DESC"
    if cursor is not None:
        where += f" AND ({', '.join(keys)}) < ({', '.join('?' * len(keys))})" if len(keys) > 1 else " AND v.version < ?"
        params += cursor
    rows = reader.all(
        f"SELECT v.rtype, v.id, v.version, v.last_updated, v.content FROM resource_version v WHERE {where} "
        f"ORDER BY {order} LIMIT ?",
        [*params, count + 1],
    )
    versions = [Version(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows[:count]]
    has_more = len(rows) > count
    last = versions[-1] if has_more else None
    next_cursor: list | None = None
    if last is not None:
        if scope.rid is not None:
            next_cursor = [last.version]
        elif scope.rtype is not None:
            next_cursor = [last.last_updated, last.rid, last.version]
        else:
            next_cursor = [last.last_updated, last.rtype, last.rid, last.version]
    return HistoryPage(versions, has_more, next_cursor)


def cursor_shape(scope: HistoryScope) -> tuple[type, ...]:
    """The types of a cursor of this scope's pages: a paging token's cursor is checked against it."""
    if scope.rid is not None:
        return (int,)
    if scope.rtype is not None:
        return (int, str, int)
    return (int, str, str, int)


def exists(reader: Reader, rtype: str, rid: str) -> bool:
    """Whether `rtype/rid` has any version (served now or once)."""
    return reader.one("SELECT 1 FROM resource_version WHERE rtype = ? AND id = ? LIMIT 1", [rtype, rid]) is not None
