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

from app.search.params import RESOURCE_TYPES
from app.search.query import Restriction
from app.store.reader import Reader
from app.store.search_sql import restriction_sql

#: the types whose versions the table holds
SERVED = RESOURCE_TYPES


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


def _common(scope: HistoryScope, params: list) -> list[str]:
    """`_since` and `_at`: conditions on each version whatever its type."""
    conditions = []
    if scope.since is not None:
        conditions.append("v.last_updated >= ?")
        params.append(scope.since)
    if scope.at is not None:
        low, high = scope.at
        # versions are numbered without gaps (app/store/resources.py): the one after is version + 1,
        # found by the primary key
        conditions.append(
            "v.last_updated < ? AND NOT EXISTS (SELECT 1 FROM resource_version n WHERE n.rtype = v.rtype "
            "AND n.id = v.id AND n.version = v.version + 1 AND n.last_updated <= ?)"
        )
        params += [high, low]
    return conditions


def _branches(scope: HistoryScope) -> list[tuple[list[str], list]]:
    """Per type listed: the conditions that keep its versions to what the request may see."""
    if scope.rid is not None:
        assert scope.rtype is not None  # an instance has a type
        return [(["v.rtype = ?", "v.id = ?"], [scope.rtype, scope.rid])]
    branches = []
    for rtype in (scope.rtype,) if scope.rtype is not None else scope.types:
        params: list = [rtype]
        visible = _visible(rtype, scope.restrictions, params)
        branches.append((["v.rtype = ?"] + ([visible] if visible else []), params))
    return branches


#: a compartment with more resources than this is read in time order like an unrestricted history
_FEW = 1000


def _compartment_branches(reader: Reader, scope: HistoryScope) -> list[tuple[list[str], list]] | None:
    """Per type, the versions of the resources the compartment may see, by their ids: the ids are
    read first (from `resource`, whose ids compare with the index rows' in one collation), so the
    versions are found by the primary key. None when there are too many for that."""
    branches = []
    for rtype in (scope.rtype,) if scope.rtype is not None else scope.types:
        params: list = [rtype]
        visible = _visible(rtype, scope.restrictions, params)
        ids = [r[0] for r in reader.all(f"SELECT id FROM resource WHERE rtype = ? AND {visible}", params)]
        if len(ids) > _FEW:
            return None
        if ids:
            branches.append((["v.rtype = ?", f"v.id IN ({', '.join('?' * len(ids))})"], [rtype, *ids]))
    return branches


def _in_compartment(scope: HistoryScope) -> bool:
    """Whether a patient compartment narrows the versions listed (to a few resources' versions)."""
    types = (scope.rtype,) if scope.rtype is not None else scope.types
    restrictions = scope.restrictions or {}
    return scope.rid is None and all(
        rtype in restrictions and (restrictions[rtype].patients is not None or restrictions[rtype].deny)
        for rtype in types
    )


def _visible(rtype: str, restrictions: dict[str, Restriction] | None, params: list) -> str | None:
    """The request's restriction of `rtype` (search's, on `id`): the versions of the resources it
    may see now. A deleted resource is in no search, so its versions are in no restricted history."""
    return restriction_sql(rtype, restrictions, params) if restrictions else None


_COLUMNS = "v.rtype, v.id, v.version, v.last_updated, v.content"


def read_page(reader: Reader, scope: HistoryScope, count: int, cursor: list | None) -> HistoryPage:
    """One page of at most `count` versions, newest first; `cursor` is the previous page's.

    Unrestricted, a page is the first rows of the time index (on SQLite named: its planner would
    rather sort the rows of the type index). Under a patient compartment the few resources it may
    see drive the query instead: their versions, per type, are gathered first and then sorted;
    read in time order, every version of the store would be passed over to find them.
    """
    if count == 0:
        return HistoryPage([], False, None)
    if scope.rid is not None:
        order, keys = "v.version DESC", ["v.version"]
    elif scope.rtype is not None:  # one type: its index orders by (last_updated, id, version)
        order, keys = "v.last_updated DESC, v.id DESC, v.version DESC", ["v.last_updated", "v.id", "v.version"]
    else:
        keys = ["v.last_updated", "v.rtype", "v.id", "v.version"]
        order = ", ".join(f"{key} DESC" for key in keys)
    common_params: list = []
    common = _common(scope, common_params)
    if cursor is not None:
        common.append(f"({', '.join(keys)}) < ({', '.join('?' * len(keys))})" if len(keys) > 1 else "v.version < ?")
        common_params += cursor
    few = _compartment_branches(reader, scope) if _in_compartment(scope) else None
    branches = few if few is not None else _branches(scope)
    params: list = []
    if few is not None:
        if not few:
            return HistoryPage([], False, None)
        parts = []
        for conditions, branch_params in branches:
            parts.append(f"SELECT {_COLUMNS} FROM resource_version v WHERE {' AND '.join(conditions + common)}")
            params += branch_params + common_params
        sql = f"WITH m AS MATERIALIZED ({' UNION ALL '.join(parts)}) SELECT * FROM m v ORDER BY {order} LIMIT ?"
    else:
        wheres = []
        if (
            scope.rid is not None
            or scope.rtype is not None
            or set(scope.types) != set(SERVED)
            or any(len(conditions) > 1 for conditions, _ in branches)
        ):
            wheres.append("(" + " OR ".join(f"({' AND '.join(c)})" for c, _ in branches) + ")" if branches else "1 = 0")
            params += [p for _, branch_params in branches for p in branch_params]
        wheres += common
        params += common_params
        hint = ""
        if reader.is_sqlite and scope.rid is None and all(len(c) == 1 for c, _ in branches):
            hint = " INDEXED BY ix_version_type_time" if scope.rtype is not None else " INDEXED BY ix_version_time"
        sql = (
            f"SELECT {_COLUMNS} FROM resource_version v{hint} WHERE {' AND '.join(wheres) or '1 = 1'} "
            f"ORDER BY {order} LIMIT ?"
        )
    rows = reader.all(sql, [*params, count + 1])
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
