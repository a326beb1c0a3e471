"""SearchQuery -> SQL over the index tables; returns stored JSON bytes, never models.

Each clause becomes `id IN (SELECT rid FROM idx_… WHERE …)`; clauses are ANDed, the values
of one clause ORed. Results are ordered by id and a page continues after the last id of the
previous one (keyset paging), so pages stay stable while data is added. The SQL is plain
text with `?` placeholders (see reader.py), the same on SQLite and PostgreSQL.

The audit trail is searched by the same builder over its own tables (`audit_event` and its
lookup rows `audit_index`, app/store/tables.py), newest first; each event is served as the
AuditEvent made of its record (app/store/audit_record.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence, Sized
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.search.params import BY_RESOURCE, SearchParam
from app.search.query import (
    ANY_SYSTEM,
    ChainClause,
    Clause,
    HasClause,
    Include,
    Restriction,
    SearchClause,
    SearchError,
    SearchQuery,
    SortKey,
)
from app.search.text import normalize
from app.store.audit_record import render_event
from app.store.indexer import IDENTIFIER, PRESENT, TEXT
from app.store.reader import Reader, TooCostly

_TABLE = {"token": "idx_token", "string": "idx_string", "date": "idx_date", "reference": "idx_reference"}


@dataclass
class SearchResult:
    matches: list[tuple[str, bytes]]  # (id, content) of this page, in order
    total: int | None
    has_more: bool
    includes: list[tuple[str, str, bytes]]  # (type, id, content)
    #: the last match's sort values and id: where the next page starts
    cursor: list | None = None


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _date_sql(low_col: str, high_col: str, prefix: str, low: int, high: int, params: list) -> str:
    """Compare the target range [low_col, high_col) with the search range [low, high)."""
    contained = f"({low_col} >= ? AND {high_col} <= ?)"
    if prefix == "eq":
        params += [low, high]
        return contained
    if prefix == "ne":
        params += [low, high]
        return f"NOT {contained}"
    if prefix == "gt":
        params.append(high)
        return f"{high_col} > ?"
    if prefix == "lt":
        params.append(low)
        return f"{low_col} < ?"
    # ge and le also state the bound both of their branches imply (a range ends after it
    # starts), so one index range serves the whole condition instead of a scan or an OR
    if prefix == "ge":
        params += [low, high, low, high]
        return f"({high_col} > ? AND ({high_col} > ? OR {contained}))"
    if prefix == "le":
        params += [high, low, low, high]
        return f"({low_col} < ? AND ({low_col} < ? OR {contained}))"
    if prefix == "sa":
        params.append(high)
        return f"{low_col} >= ?"
    if prefix == "eb":
        params.append(low)
        return f"{high_col} <= ?"
    # ap: overlap with the value widened by 10% of its distance from now (server-defined, documented)
    now = int(datetime.now(UTC).timestamp() * 1_000_000)
    slack = max(abs(now - low) // 10, high - low)
    params += [high + slack, low - slack]
    return f"({low_col} < ? AND {high_col} > ?)"


def _value_sql(clause: Clause, value: Any, params: list) -> str:
    kind = clause.kind
    if kind == "token":
        system, code = value
        if system is ANY_SYSTEM:
            params.append(code)
            return "code = ?"
        if system == "":
            params.append(code)
            return "(code = ? AND system IS NULL)"
        if code == "":
            params.append(system)
            return "system = ?"
        params += [system, code]
        return "(system = ? AND code = ?)"
    if kind == "string":
        if clause.modifier == "exact":
            params.append(value)
            return "value = ?"
        norm = normalize(value)
        pattern = _like_escape(norm)
        if clause.modifier == "contains":
            params.append(f"%{pattern}%")
            return "norm LIKE ? ESCAPE '\\'"
        if not norm or norm[-1] == "\U0010ffff":
            params.append(f"{pattern}%")
            return "norm LIKE ? ESCAPE '\\'"
        # the prefix as a range too: a plan made once for any value (PostgreSQL switches a
        # repeated prepared statement to such a generic plan) cannot derive the range from
        # LIKE ?, and would scan every value of the parameter
        params += [norm, norm[:-1] + chr(ord(norm[-1]) + 1), f"{pattern}%"]
        return "(norm >= ? AND norm < ? AND norm LIKE ? ESCAPE '\\')"
    if kind == "date":
        prefix, low, high = value
        return _date_sql("low", "high", prefix, low, high, params)
    if kind == "reference":
        rtype, rid = value
        if rid == "":
            return "1 = 0"
        if clause.param.follows_links and rtype in (None, "Patient") and not clause.modifier:
            return _linked_patients_sql(rtype, rid, params)
        if rtype:
            params += [rid, rtype]
            return "(target_id = ? AND target_type = ?)"
        params.append(rid)
        return "target_id = ?"
    raise ValueError(kind)


def _linked_patients_sql(rtype: str | None, rid: str, params: list) -> str:
    """The Patient `rid` and every Patient it links to (its Patient.link, indexed as `link`).

    Links are stored on both Patients of a pair, so one step from the searched Patient
    reaches each record linked to it; the probe uses the index rows' owner index.
    """
    params += [rid, rid]
    linked = (
        "target_id IN (SELECT ? UNION ALL SELECT target_id FROM idx_reference WHERE rtype = 'Patient' "
        "AND rid = ? AND param = 'link' AND target_type = 'Patient')"
    )
    return f"(target_type = 'Patient' AND {linked})" if rtype else linked


#: how long an instant kept in a column lasts: meta.lastUpdated is kept to the millisecond,
#: AuditEvent.recorded to the microsecond
_COLUMN_SPAN = {"last_updated": 1000, "recorded": 1}


def _column_sql(clause: Clause, value: Any, params: list) -> str:
    column = clause.param.column
    assert column is not None  # called for parameters kept in a column only
    if clause.param.type == "token":
        system, code = value
        if column == "id" and system is not ANY_SYSTEM and system != "":
            return "1 = 0"  # Resource.id has no system: system|id matches nothing
        params.append(code)
        return f"{column} = ?"
    prefix, low, high = value
    return _date_sql(column, f"({column} + {_COLUMN_SPAN[column]})", prefix, low, high, params)


def _trail_sql(clause: Clause, params: list) -> str:
    """A clause on the audit trail: its columns (date, outcome), its lookup rows (patient, agent),
    and entity-type, which the shape of every event answers: a system object (the query) always,
    a person exactly when it names patients."""
    param = clause.param
    if param.column:
        return "(" + " OR ".join(_column_sql(clause, v, params) for v in clause.values) + ")"
    if param.name == "entity-type":
        codes = {code for _, code in clause.values}
        if "2" in codes:
            return "1 = 1"
        if "1" not in codes:
            return "1 = 0"
        params.append("patient")
        return "id IN (SELECT event_id FROM audit_index WHERE param = ?)"
    values = [rid for _, rid in clause.values] if clause.kind == "reference" else list(clause.values)
    params += [param.name, *values]
    return f"id IN (SELECT event_id FROM audit_index WHERE param = ? AND value IN ({_in(values)}))"


def _present_sql(rtype: str, param: SearchParam, params: list) -> str:
    """The `rtype` resources in which `param`'s element is present, whatever it holds (FHIR R4
    search 3.1.1.5.2, `:missing`): every index row a value of it can give counts, those of its
    modifiers too: a CodeableConcept with a text alone has only `:text` rows, a Reference with an
    identifier alone (`basedOn`: an accession) only `:identifier` rows."""
    if param.matcher == "phonetic":  # codes only of names with letters: any string row of the element
        names = [p.name for p in BY_RESOURCE[rtype].values() if p.type == "string" and p.paths == param.paths]
        rows = [("idx_string", name) for name in names]
    elif param.type == "token":
        rows = [("idx_token", param.name), ("idx_string", param.name + TEXT)]
    elif param.bare_display:  # a name alone has no target: its presence row says it is there
        rows = [("idx_string", param.name + PRESENT)]
    elif param.type == "reference":
        rows = [("idx_reference", param.name), ("idx_token", param.name + IDENTIFIER)]
    else:
        rows = [(_TABLE[param.type], param.name)]
    for _, name in rows:
        params += [rtype, name]
    return " UNION ALL ".join(f"SELECT rid FROM {table} WHERE rtype = ? AND param = ?" for table, _ in rows)


def _phonetic_sql(rtype: str, clause: Clause, codes: list[str], params: list) -> str:
    """Every word's code among the resource's codes (a value without letters matches nothing)."""
    if not codes:
        return "1 = 0"
    params += [rtype, clause.index, *codes, len(codes)]
    return (
        f"id IN (SELECT rid FROM idx_string WHERE rtype = ? AND param = ? AND norm IN ({_in(codes)}) "
        "GROUP BY rid HAVING COUNT(DISTINCT norm) = ?)"
    )


def _lists_matches(clause: SearchClause) -> bool:
    """Whether the clause's SQL lists its matches (`id IN …`), so later clauses can probe them."""
    if not isinstance(clause, Clause):  # a chain or _has lists the resources it reaches
        return True
    return clause.modifier != "not" and not (clause.modifier == "missing" and clause.values[0])


def restriction_sql(rtype: str, restrictions: dict[str, Restriction], params: list) -> str | None:
    """The condition on `id` that keeps `rtype` resources to what the request may see
    (None: no restriction). A compartment is an index probe on the reference rows, so it
    drives the search instead of filtering its pages afterwards."""
    restriction = restrictions.get(rtype)
    if restriction is None:
        return None
    if restriction.deny:
        return "1 = 0"
    parts = []
    if restriction.patients is not None:
        parts.append(_compartment_sql(rtype, restriction.patients, restrictions, params))
    if restriction.alternatives is not None:
        parts.append(_alternatives_sql(rtype, restriction.alternatives, restrictions, params))
    return " AND ".join(parts) if parts else None


def _alternatives_sql(
    rtype: str,
    alternatives: tuple[tuple[SearchClause, ...], ...],
    restrictions: dict[str, Restriction],
    params: list,
) -> str:
    """SMART v2 granular scopes: each scope's parameters ANDed, the scopes ORed.

    A chain inside a scope's parameters keeps to the compartment but not to the other
    types' granular scopes: those could refer back to this one without end.
    """
    restrictions = {t: Restriction(r.patients, None, r.deny) for t, r in restrictions.items()}
    ors = [
        "("
        + " AND ".join([_clause_sql(rtype, c, params, restrictions=restrictions) for c in clauses] or ["1 = 1"])
        + ")"
        for clauses in alternatives
    ]
    return "(" + (" OR ".join(ors) or "1 = 0") + ")"


def _studies_of(patients: Sequence[str], params: list) -> str:
    """ImagingStudy ids whose patient is one of `patients` (the lookup index, by target)."""
    if not patients:
        return "SELECT rid FROM idx_reference WHERE 1 = 0"
    params += ["ImagingStudy", "patient", *patients, "Patient"]
    return (
        f"SELECT rid FROM idx_reference WHERE rtype = ? AND param = ? AND target_id IN ({_in(patients)}) "
        "AND target_type = ?"
    )


def _compartment_sql(rtype: str, patients: Sequence[str], restrictions: dict[str, Restriction], params: list) -> str:
    """Patient: the compartment's patients; ImagingStudy: their studies; Endpoint: those
    that a study the request may see points at (Endpoint is not in the Patient compartment)."""
    if rtype == "Patient":
        if not patients:
            return "1 = 0"
        params.extend(patients)
        return f"id IN ({_in(patients)})"
    if rtype == "ImagingStudy":
        return f"id IN ({_studies_of(patients, params)})"
    if rtype == "Endpoint":
        params += ["ImagingStudy", "endpoint", "Endpoint"]
        narrowed = restrictions.get("ImagingStudy")
        if narrowed is not None and narrowed.alternatives is not None:
            params.append("ImagingStudy")
            studies = f"SELECT id FROM resource WHERE rtype = ? AND id IN ({_studies_of(patients, params)}) AND "
            studies += _alternatives_sql("ImagingStudy", narrowed.alternatives, {}, params)
        else:
            studies = _studies_of(patients, params)
        return (
            f"id IN (SELECT target_id FROM idx_reference WHERE rtype = ? AND param = ? AND target_type = ? "
            f"AND rid IN ({studies}))"
        )
    return "1 = 0"  # a type outside this server's compartment rules: nothing


def _restricted(rtype: str, restrictions: dict[str, Restriction] | None, params: list) -> str:
    """` AND <restriction>` for an inner `SELECT id FROM resource`, or nothing."""
    sql = restriction_sql(rtype, restrictions or {}, params) if restrictions else None
    return f" AND {sql}" if sql else ""


def _clause_sql(
    rtype: str,
    clause: SearchClause,
    params: list,
    probe: bool = False,
    restrictions: dict[str, Restriction] | None = None,
) -> str:
    """SQL condition on `id` of the `rtype` resource for one (possibly chained) clause.

    `probe`: a clause ANDed after one that lists the candidates checks each candidate's own
    rows (EXISTS on the owner index) instead of listing every resource it matches: SQLite
    materializes an IN list, which for `modality=CT` is a third of all studies.
    `restrictions`: a chain or `_has` looks only at resources the request may see, so it
    cannot tell whether another patient's data exist.
    """
    if rtype in _TRAILS:
        assert isinstance(clause, Clause)  # the trail is neither chained from nor into (app/search/query.py)
        return _trail_sql(clause, params)
    if isinstance(clause, ChainClause):
        params += [rtype, clause.param.name, clause.target, clause.target]
        inner = _clause_sql(clause.target, clause.inner, params, restrictions=restrictions)
        inner += _restricted(clause.target, restrictions, params)
        return (
            "id IN (SELECT rid FROM idx_reference WHERE rtype = ? AND param = ? AND target_type = ? "
            f"AND target_id IN (SELECT id FROM resource WHERE rtype = ? AND {inner}))"
        )
    if isinstance(clause, HasClause):
        params += [clause.source, clause.param.name, rtype, clause.source]
        inner = _clause_sql(clause.source, clause.inner, params, restrictions=restrictions)
        inner += _restricted(clause.source, restrictions, params)
        return (
            "id IN (SELECT target_id FROM idx_reference WHERE rtype = ? AND param = ? AND target_type = ? "
            f"AND rid IN (SELECT id FROM resource WHERE rtype = ? AND {inner}))"
        )
    param = clause.param
    if param.column:
        if clause.modifier == "missing":
            return "1 = 0" if clause.values[0] else "1 = 1"  # every resource has an id and lastUpdated
        values = "(" + " OR ".join(_column_sql(clause, v, params) for v in clause.values) + ")"
        return f"NOT {values}" if clause.modifier == "not" else values
    if clause.kind == "phonetic":
        return "(" + " OR ".join(_phonetic_sql(rtype, clause, codes, params) for codes in clause.values) + ")"
    if clause.modifier == "missing":
        present = _present_sql(rtype, param, params)
        return f"id NOT IN ({present})" if clause.values[0] else f"id IN ({present})"
    table = _TABLE[clause.kind]
    params += [rtype, clause.index]
    owned = f"SELECT rid FROM {table} WHERE rtype = ? AND param = ?"
    values = " OR ".join(_value_sql(clause, v, params) for v in clause.values)
    negate = "NOT " if clause.modifier == "not" else ""
    if probe and not negate:
        return f"EXISTS ({owned} AND rid = id AND ({values}))"  # `id`: the outer resource's
    return f"id {negate}IN ({owned} AND ({values}))"


#: `_total=estimate` counts exactly up to this many matches; beyond, PostgreSQL's planner estimates
ESTIMATE_EXACT_UP_TO = 1000

_SORT_AGGREGATE = {  # type -> (index table, value expression); ascending takes MIN, descending MAX
    "token": ("idx_token", "code"),
    "string": ("idx_string", "norm"),
    "date": ("idx_date", "low"),
    "reference": ("idx_reference", "target_type || '/' || target_id"),
}


def _sort_expr(key: SortKey, params: list, text_collation: str) -> str:
    """One _sort key as a value per resource: the value that comes first in the asked order.

    A repeating element sorts by its lowest value ascending and its highest descending
    (FHIR R4 search 3.1.1.5.7); dates by the start of their period. A resource without a
    value gets NULL, which sorts last either way.
    """
    param = key.param
    if param.column:
        return f"r.{param.column}"
    table, value = _SORT_AGGREGATE[param.type]
    collate = text_collation if param.type != "date" else ""
    params.append(param.name)
    return (
        f"(SELECT {'MAX' if key.descending else 'MIN'}({value}{collate}) FROM {table} "
        f"WHERE rtype = r.rtype AND rid = r.id AND param = ?)"
    )


@dataclass(frozen=True)
class _Table:
    """Where the matches of a type are kept, and how they are served."""

    name: str
    #: rows of several types, told apart by `rtype`
    typed: bool = True
    #: columns read with each match beyond id and content (what `serve` needs)
    extra: tuple[str, ...] = ()
    #: ties of the sort are broken by id, descending (the trail: newest first)
    id_descending: bool = False
    #: the served JSON of a row (id, content, *extra); None: the stored content as it is
    serve: Callable[[tuple], bytes] | None = None


_RESOURCES = _Table("resource")
_TRAILS = {
    "AuditEvent": _Table(
        "audit_event",
        typed=False,
        extra=("recorded",),
        id_descending=True,
        serve=lambda row: render_event(row[0], row[2], row[1]),
    )
}


def _after_sql(query: SearchQuery, cursor: list, params: list, id_descending: bool = False) -> str:
    """Rows after the cursor (the last row's sort values and id) in the search's order."""
    keys = [f"k{i}" for i in range(len(query.sort))] + ["id"]
    descending = [k.descending for k in query.sort] + [id_descending]
    alternatives = []
    for i, (key, value) in enumerate(zip(keys, cursor, strict=False)):
        if value is None:
            continue  # NULLs sort last: nothing comes after a NULL in this key
        same = []
        for prior, prior_value in zip(keys[:i], cursor[:i], strict=True):
            if prior_value is None:
                same.append(f"{prior} IS NULL")
            else:
                same.append(f"{prior} = ?")
                params.append(prior_value)
        params.append(value)
        if key != "id":
            step = f"({key} {'<' if descending[i] else '>'} ? OR {key} IS NULL)"
        else:
            step = f"id {'<' if id_descending else '>'} ?"
        alternatives.append("(" + " AND ".join(same + [step]) + ")")
    return "(" + (" OR ".join(alternatives) or "1 = 0") + ")"


def _by_patient(query: SearchQuery) -> bool:
    """Whether the search is a lookup of the resources of given patients and nothing else
    (`ImagingStudy?patient=…`, in a compartment or not): an index probe whose cost follows the
    few resources of a patient, whatever the patient, so one plan serves every value
    (app/store/reader.py `any_values`). Anything else is planned for its values."""
    if query.sort or query.rtype in _TRAILS or not query.clauses:
        return False
    if any(r.alternatives is not None for r in query.restrictions.values()):
        return False
    return all(
        isinstance(c, Clause) and c.kind == "reference" and c.param.follows_links and not c.modifier
        for c in query.clauses
    )


def _count(reader: Reader, query: SearchQuery, table: _Table, where: str, params: list) -> int | None:
    # COUNT(*) and EXPLAIN answer one row whatever matches
    if query.total != "estimate":
        counted = reader.one(f"SELECT COUNT(*) FROM {table.name} WHERE {where}", params, _by_patient(query))
        assert counted is not None
        return counted[0]
    counted = reader.one(
        f"SELECT COUNT(*) FROM (SELECT 1 FROM {table.name} WHERE {where} LIMIT ?) AS m",
        [*params, ESTIMATE_EXACT_UP_TO + 1],
    )
    assert counted is not None
    limited = counted[0]
    if limited <= ESTIMATE_EXACT_UP_TO or reader.is_sqlite:
        return limited if limited <= ESTIMATE_EXACT_UP_TO else None
    explained = reader.one(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {table.name} WHERE {where}", params)
    assert explained is not None
    plan = explained[0]
    return max(int(plan[0]["Plan"]["Plan Rows"]), limited)


def run_search(reader: Reader, query: SearchQuery, cursor: list | None) -> SearchResult:
    """One page of matches; `cursor` is the previous page's `SearchResult.cursor` (None: first page).

    SearchError ("too-costly") when it includes too much or one of its statements runs out of time."""
    try:
        return _run_search(reader, query, cursor)
    except TooCostly as exc:
        raise SearchError(
            "too-costly", f"{exc}; narrow it (fewer chains, _has, values or includes) or ask for _total=none"
        ) from None


def _run_search(reader: Reader, query: SearchQuery, cursor: list | None) -> SearchResult:
    table = _TRAILS.get(query.rtype, _RESOURCES)
    params: list = [query.rtype] if table.typed else []
    conditions, driven = (["rtype = ?"] if table.typed else []), False
    restricted = restriction_sql(query.rtype, query.restrictions, params)
    if restricted:
        conditions.append(restricted)
        driven = True
    for clause in query.clauses:
        conditions.append(_clause_sql(query.rtype, clause, params, probe=driven, restrictions=query.restrictions))
        driven = driven or _lists_matches(clause)
    where = " AND ".join(conditions) or "1 = 1"
    want_total = query.total != "none" or query.summary == "count"
    if query.summary == "count" or query.count == 0:
        return SearchResult([], _count(reader, query, table, where, params) if want_total else None, False, [])
    text_collation = "" if reader.is_sqlite else ' COLLATE "C"'
    page_params: list = []
    sort_columns = [_sort_expr(k, page_params, text_collation) for k in query.sort]
    page_params += params
    order = ", ".join(
        [f"k{i} {'DESC' if k.descending else 'ASC'} NULLS LAST" for i, k in enumerate(query.sort)]
        + ["id DESC" if table.id_descending else "id"]
    )
    served = ["id", "content", *table.extra]
    select = ", ".join(served + [f"{expr} AS k{i}" for i, expr in enumerate(sort_columns)])
    sql = f"SELECT {select} FROM {table.name} r WHERE {where}"
    if cursor is not None:
        sql = f"SELECT * FROM ({sql}) AS s WHERE {_after_sql(query, cursor, page_params, table.id_descending)}"
    page_params.append(query.count + 1)
    rows = reader.all(f"{sql} ORDER BY {order} LIMIT ?", page_params, _by_patient(query))
    has_more = len(rows) > query.count
    rows = rows[: query.count]
    serve = table.serve
    matches = [(r[0], serve(r) if serve else r[1]) for r in rows]
    total = None
    if want_total:
        if cursor is None and not has_more:
            total = len(matches)  # the first page holds everything: no need to count again
        else:
            total = _count(reader, query, table, where, params)
    wanted = (query.includes or query.revincludes) and matches
    includes = _includes(reader, query, [m[0] for m in matches]) if wanted else []
    keys_at = len(served)
    last = [*rows[-1][keys_at : keys_at + len(sort_columns)], rows[-1][0]] if rows else None
    return SearchResult(matches, total, has_more, includes, last)


def _chunks(values: list[str], size: int = 500) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _in(values: Sized) -> str:
    return ", ".join("?" * len(values))


def _follow(reader: Reader, directive: Include, ids: list[str], reverse: bool) -> set[str]:
    """Ids one include step reaches from `ids` (forward: targets; reverse: referrers)."""
    found: set[str] = set()
    known, wanted = ("target_id", "rid") if reverse else ("rid", "target_id")
    for chunk in _chunks(sorted(ids)):
        rows = reader.all(
            f"SELECT {wanted} FROM idx_reference WHERE rtype = ? AND param = ? AND target_type = ? "
            f"AND {known} IN ({_in(chunk)})",
            [directive.source, directive.param, directive.target, *chunk],
        )
        found.update(r[0] for r in rows)
    return found


def _includes(reader: Reader, query: SearchQuery, ids: list[str]) -> list[tuple[str, str, bytes]]:
    """Resources that _include/_revinclude reach from this page's matches, each once.

    The first round starts from the matches; directives marked :iterate then run again on
    what the previous round added, until nothing new turns up. Nothing is truncated: every
    resource reached is in the page that carries the matches.
    """
    in_bundle: dict[str, set[str]] = {query.rtype: set(ids)}
    frontier = {query.rtype: set(ids)}
    added: dict[str, set[str]] = {}
    first = True
    while frontier:
        new: dict[str, set[str]] = {}
        for reverse, directives in ((False, query.includes), (True, query.revincludes)):
            for d in directives:
                start, end = (d.target, d.source) if reverse else (d.source, d.target)
                if (first or d.iterate) and frontier.get(start):
                    reached = _follow(reader, d, list(frontier[start]), reverse)
                    reached = visible_ids(reader, end, reached, query.restrictions)
                    new.setdefault(end, set()).update(reached - in_bundle.get(end, set()))
        frontier = {t: v for t, v in new.items() if v}
        for rtype, more in frontier.items():
            in_bundle.setdefault(rtype, set()).update(more)
            added.setdefault(rtype, set()).update(more)
        if sum(map(len, added.values())) > query.max_includes:
            raise SearchError(
                "too-costly",
                f"parameters '_include' and '_revinclude': a page includes at most {query.max_includes} "
                "resources here; ask for fewer matches per page (_count)",
            )
        first = False
    out: list[tuple[str, str, bytes]] = []
    for rtype, target_ids in sorted(added.items()):
        for chunk in _chunks(sorted(target_ids)):
            rows = reader.all(
                f"SELECT id, content FROM resource WHERE rtype = ? AND id IN ({_in(chunk)}) ORDER BY id",
                [rtype, *chunk],
            )
            out.extend((rtype, r[0], r[1]) for r in rows)
    return out


def visible_ids(reader: Reader, rtype: str, ids: Collection[str], restrictions: dict[str, Restriction]) -> set[str]:
    """The `ids` of `rtype` the request may see (all of them when it is unrestricted)."""
    if rtype not in restrictions or not ids:
        return set(ids)
    found: set[str] = set()
    for chunk in _chunks(sorted(ids)):
        params: list = [rtype, *chunk]
        condition = restriction_sql(rtype, restrictions, params)
        rows = reader.all(f"SELECT id FROM resource WHERE rtype = ? AND id IN ({_in(chunk)}) AND {condition}", params)
        found.update(r[0] for r in rows)
    return found
