"""One export, from its request to its files: each type read from the store a keyset page at a
time (app/store/search_sql.py, ordered by id) and written as ndjson (app/export/writer.py).

What is read is what a search by the client would find, with the same SQL:
- the client's scopes (SMART v2 granular scopes, e.g. `system/ImagingStudy.rs?modality=MR`) as
  the search restrictions of each type; a type the scopes do not cover is not read at all;
- a Group export (Bulk Data Access IG v2.0.0) as the Patient compartment of the Group's members:
  those Patients, their ImagingStudies and the Endpoints those studies point at (Endpoint is not
  in the compartment but is what the studies' images are fetched from; the IG lets a server add
  resources that help to interpret the patients' data);
- `_since` as `_lastUpdated=gt`, `_typeFilter` as the queries it names, several of one type ORed:
  each query runs on its own, in id order, and their pages are merged by id without repeats;
  a large Group is read the same way, a slice of its members per query.

Between pages the run reports its progress and renews its claim on the job (`keep_going`); when
that fails (the job was cancelled, or its claim passed to another node) it stops at once.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from app.clock import micros_to_instant
from app.export.params import ExportRequest, KickoffError, filter_query
from app.export.writer import TypeFiles, outcome_line
from app.search.params import RESOURCE_TYPES
from app.search.query import Restriction, SearchClause, SearchError, SearchQuery
from app.store.reader import Reader
from app.store.search_sql import run_search

#: Group members named in one query: a statement takes at most 65,535 parameters on PostgreSQL
#: (32,766 on SQLite), so a larger Group is read as several queries, merged by id like ORed filters
MEMBERS_PER_QUERY = 10_000

#: per type: None (every resource of it), or the granular scopes' parameters, ORed
Narrowing = dict[str, list[list[tuple[str, str]]] | None]


class Stopped(Exception):
    """The job was cancelled, or another node runs it now."""


@dataclass(frozen=True)
class Where:
    """How search parameters are read: the server's zone and base URL."""

    zone: str
    base_url: str


def restrictions(narrowing: Narrowing, members: list[str] | None, where: Where) -> dict[str, Restriction]:
    """The search restrictions of every served type for this export: what the scopes let the
    client read, within the Group's members when there is a Group."""
    patients = tuple(members) if members is not None else None
    out: dict[str, Restriction] = {}
    for rtype in RESOURCE_TYPES:
        if rtype not in narrowing:
            out[rtype] = Restriction(deny=True)
            continue
        grants = narrowing[rtype]
        alternatives: tuple[tuple[SearchClause, ...], ...] | None = None
        if grants is not None:
            parsed = []
            for items in grants:
                try:
                    parsed.append(tuple(filter_query(rtype, items, where.zone, where.base_url).clauses))
                except KickoffError:  # a scope that cannot apply to the type grants nothing
                    continue
            if not parsed:
                out[rtype] = Restriction(deny=True)
                continue
            alternatives = tuple(parsed)
        if patients is not None or alternatives is not None:
            out[rtype] = Restriction(patients, alternatives)
    return out


def _queries(rtype: str, request: ExportRequest, where: Where, page_size: int) -> list[SearchQuery]:
    since = []
    if request.since_micros is not None:
        # stored lastUpdated is kept to the millisecond: later than `since` is later than its millisecond
        since = [("_lastUpdated", "gt" + micros_to_instant(request.since_micros // 1000 * 1000))]
    queries = []
    for items in request.filters.get(rtype) or [[]]:
        query = filter_query(rtype, list(items) + since, where.zone, where.base_url) if items or since else None
        query = query or SearchQuery(rtype=rtype)
        query.count, query.total, query.sort = page_size, "none", []
        queries.append(query)
    return queries


def _matches(reader: Reader, query: SearchQuery, page_done: Callable[[], None]) -> Iterator[tuple[str, bytes]]:
    cursor = None
    while True:
        result = run_search(reader, query, cursor)
        yield from result.matches
        page_done()
        if not result.has_more:
            return
        cursor = result.cursor


def _merged(streams: list[Iterator[tuple[str, bytes]]]) -> Iterator[tuple[str, bytes]]:
    """Matches of several queries, each in id order, as one stream in id order without repeats."""
    if len(streams) == 1:
        yield from streams[0]
        return
    last = None
    for rid, content in heapq.merge(*streams, key=lambda match: match[0]):
        if rid != last:
            yield rid, content
            last = rid


def run_export(
    reader: Reader,
    request: ExportRequest,
    types: list[str],
    narrowing: Narrowing,
    members: list[str] | None,
    directory: Path,
    where: Where,
    page_size: int,
    max_per_file: int,
    keep_going: Callable[[str], bool],
) -> dict:
    """Write the export into `directory`; its manifest's files as {"output": [{type, file,
    count}], "error": [...]}. Stopped when `keep_going` says so."""
    slices: list[list[str] | None] = [None]
    if members is not None:
        slices = [members[at : at + MEMBERS_PER_QUERY] for at in range(0, len(members), MEMBERS_PER_QUERY)] or [[]]
    limits = [restrictions(narrowing, part, where) for part in slices]
    output: list[dict] = []
    errors = TypeFiles(directory, "OperationOutcome", max_per_file)
    written = 0
    done: list[str] = []

    def page_done() -> None:
        state = ", ".join(done + [f"{rtype}: {files_count()} resources so far"])
        if not keep_going(f"{written} resources written ({state})"):
            raise Stopped

    try:
        for rtype in types:
            files = TypeFiles(directory, rtype, max_per_file)

            def files_count(files: TypeFiles = files) -> int:
                return sum(count for _, count in files.files)

            try:
                queries = []
                for limit in limits:
                    for query in _queries(rtype, request, where, page_size):
                        query.restrictions = limit
                        queries.append(query)
                streams = [_matches(reader, query, page_done) for query in queries]
                for _, content in _merged(streams):
                    files.write(content)
                    written += 1
            except (SearchError, KickoffError) as err:  # e.g. a query too costly to finish
                errors.write(outcome_line(err.code, f"{rtype}: {err.diagnostics}"))
            finally:
                files.close()
            output += [{"type": rtype, "file": name, "count": count} for name, count in files.files]
            done.append(f"{rtype}: {files_count()}")
    finally:
        errors.close()
    return {
        "output": output,
        "error": [{"type": "OperationOutcome", "file": name, "count": count} for name, count in errors.files],
    }
