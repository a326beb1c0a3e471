"""SearchQuery -> SQL over the index tables; returns stored JSON bytes, never models.

Each clause becomes `resource.id IN (SELECT rid FROM idx_... WHERE ...)`; clauses are
ANDed, the values of one clause ORed. Results are ordered by id, and a page continues
after the last id of the previous one (keyset paging), so pages stay stable while data
is added.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import and_, false, func, not_, or_, select, true
from sqlalchemy.engine import Connection

from app.search.query import ANY_SYSTEM, Clause, SearchQuery
from app.store import tables as t

R = t.Resource
_INDEX = {"token": t.TokenIndex, "string": t.StringIndex, "date": t.DateIndex, "reference": t.ReferenceIndex}


@dataclass
class SearchResult:
    matches: list[tuple[str, bytes]]  # (id, content) of this page, in order
    total: int | None
    has_more: bool
    includes: list[tuple[str, str, bytes]]  # (type, id, content)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _date_condition(low_col, high_col, prefix: str, low: int, high: int):
    contained = and_(low_col >= low, high_col <= high)
    if prefix == "eq":
        return contained
    if prefix == "ne":
        return not_(contained)
    if prefix == "gt":
        return high_col > high
    if prefix == "lt":
        return low_col < low
    if prefix == "ge":
        return or_(high_col > high, contained)
    if prefix == "le":
        return or_(low_col < low, contained)
    if prefix == "sa":
        return low_col >= high
    if prefix == "eb":
        return high_col <= low
    # ap: overlap with the value widened by 10% of its distance from now (server-defined, documented)
    now = int(datetime.now(timezone.utc).timestamp() * 1_000_000)
    slack = max(abs(now - low) // 10, high - low)
    return and_(low_col < high + slack, high_col > low - slack)


def _value_condition(clause: Clause, table, value):
    kind = clause.param.type
    if kind == "token":
        system, code = value
        if system is ANY_SYSTEM:
            return table.code == code
        if system == "":
            return and_(table.code == code, table.system.is_(None))
        if code == "":
            return table.system == system
        return and_(table.system == system, table.code == code)
    if kind == "string":
        from app.store.indexer import normalize

        if clause.modifier == "exact":
            return table.value == value
        pattern = _like_escape(normalize(value))
        if clause.modifier == "contains":
            return table.norm.like(f"%{pattern}%", escape="\\")
        return table.norm.like(f"{pattern}%", escape="\\")
    if kind == "date":
        return _date_condition(table.low, table.high, *value)
    if kind == "reference":
        rtype, rid = value
        if rid == "":
            return false()
        cond = table.target_id == rid
        return and_(cond, table.target_type == rtype) if rtype else cond
    raise ValueError(kind)


def _column_condition(clause: Clause, value):
    if clause.param.column == "id":
        system, code = value
        return R.id == code
    prefix, low, high = value  # last_updated: an instant with millisecond precision
    return _date_condition(R.last_updated, R.last_updated + 1000, prefix, low, high)


def _clause_condition(rtype: str, clause: Clause):
    param = clause.param
    if param.column:
        if clause.modifier == "missing":
            return true() if not clause.values[0] else false()
        return or_(*(_column_condition(clause, v) for v in clause.values))
    table = _INDEX[param.type]
    owned = and_(table.rtype == rtype, table.param == param.name)
    if clause.modifier == "missing":
        has_value = R.id.in_(select(table.rid).where(owned))
        return not_(has_value) if clause.values[0] else has_value
    values = or_(*(_value_condition(clause, table, v) for v in clause.values))
    subquery = select(table.rid).where(owned, values)
    if clause.modifier == "not":
        return not_(R.id.in_(subquery))
    return R.id.in_(subquery)


def run_search(conn: Connection, query: SearchQuery, after: str | None) -> SearchResult:
    conditions = [R.rtype == query.rtype] + [_clause_condition(query.rtype, c) for c in query.clauses]
    total = None
    if query.total != "none" or query.summary_count:
        total = conn.execute(select(func.count()).select_from(R).where(*conditions)).scalar_one()
    if query.summary_count or query.count == 0:
        return SearchResult([], total, False, [])
    page_conditions = conditions + ([R.id > after] if after is not None else [])
    rows = conn.execute(
        select(R.id, R.content).where(*page_conditions).order_by(R.id).limit(query.count + 1)
    ).all()
    has_more = len(rows) > query.count
    rows = rows[: query.count]
    matches = [(r.id, r.content) for r in rows]
    includes = _includes(conn, query, [m[0] for m in matches]) if query.includes and matches else []
    return SearchResult(matches, total, has_more, includes)


def _includes(conn: Connection, query: SearchQuery, ids: list[str]) -> list[tuple[str, str, bytes]]:
    """Resources referenced by this page's matches, each once (search.mode = include)."""
    wanted: dict[str, set[str]] = {}
    ref = t.ReferenceIndex
    for source, pname, target in query.includes:
        rows = conn.execute(
            select(ref.target_id).where(ref.rtype == source, ref.param == pname, ref.target_type == target,
                                        ref.rid.in_(ids))
        ).all()
        wanted.setdefault(target, set()).update(r.target_id for r in rows)
    out = []
    for target, target_ids in sorted(wanted.items()):
        if not target_ids:
            continue
        rows = conn.execute(
            select(R.id, R.content).where(R.rtype == target, R.id.in_(sorted(target_ids))).order_by(R.id)
        ).all()
        out.extend((target, r.id, r.content) for r in rows)
    return out
