"""On-demand mode: ask the archive for a patient's studies before answering a search.

For sources with `on_demand` set, a search that names a patient (`ImagingStudy?patient=…`,
`?subject=…`, `?patient.identifier=system|value`, `Patient?identifier=system|value`) first
asks each such archive for that patient's studies when the last ask is older than
`max_age`, so an app sees studies the periodic sync has not reached yet. The fetch runs in
the background; if it is not done within `deadline` the search answers 503 with
Retry-After (as the SMART Imaging Access IG allows) and the fetch goes on, so the app's
retry finds the studies. An archive that cannot be reached does not fail the search: it
is answered from what the store holds, and the failure is logged.

The archive is asked by Patient ID (0010,0020), the value of an identifier whose system is
one the source produces (its `patient_id_system` or a mapped issuer in `issuer_systems`).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Protocol

import orjson

from app.clock import instant_now_ms
from app.errors import FhirError
from app.logsafe import describe
from app.search.query import ANY_SYSTEM, ChainClause, Clause, SearchQuery
from app.sources.base import Source
from app.sources.errors import SourceError
from app.sources.settings import SourceSettings
from app.store.reader import Reader
from app.store.repository import Store
from app.store.resources import read_current
from app.sync.batch import StudyBatch
from app.sync.keyed import keyed_context
from app.sync.summary import SyncSummary


class Guard(Protocol):
    """What on-demand asks of the request path's Guard (app/api/hooks.py)."""

    def fetchable_identifiers(self) -> set[tuple[str, str]] | None: ...


class Hooks(Protocol):
    """Where on-demand registers itself on the request path (app/api/hooks.py)."""

    before_search: list


log = logging.getLogger(__name__)

_PATIENT_REFERENCES = ("patient", "subject")


def claimed_systems(src: SourceSettings) -> set[str]:
    """Identifier systems of the patients this source's studies map to."""
    return {src.patient_id_system, *src.issuer_systems.values()}


def _identifier_values(clause: Clause) -> list[tuple[str, str]]:
    return [(system, code) for system, code in clause.values if system is not ANY_SYSTEM and system and code]


def searched_identifiers(query: SearchQuery, read_patient: Callable[[str], dict | None]) -> list[tuple[str, str]]:
    """(system, value) of the patients a search names; `read_patient(id)` gives a stored Patient."""
    pairs: list[tuple[str, str]] = []
    for clause in query.clauses:
        if (
            query.rtype == "Patient"
            and isinstance(clause, Clause)
            and clause.param.name == "identifier"
            and clause.modifier is None
            and clause.kind == "token"
        ):
            pairs += _identifier_values(clause)
        elif query.rtype != "ImagingStudy":
            continue
        elif (
            isinstance(clause, ChainClause)
            and clause.param.name in _PATIENT_REFERENCES
            and clause.target == "Patient"
            and isinstance(clause.inner, Clause)
            and clause.inner.param.name == "identifier"
            and clause.inner.modifier is None
            and clause.inner.kind == "token"
        ):
            pairs += _identifier_values(clause.inner)
        elif isinstance(clause, Clause) and clause.param.name in _PATIENT_REFERENCES and clause.modifier is None:
            for rtype, rid in clause.values:
                patient = read_patient(rid) if rtype in (None, "Patient") and rid else None
                # the search also finds the studies of linked records (Patient.link): ask for theirs too
                linked = [
                    read_patient(ref.removeprefix("Patient/"))
                    for ref in (lnk.get("other", {}).get("reference", "") for lnk in (patient or {}).get("link", []))
                    if ref.startswith("Patient/")
                ]
                for record in [patient, *linked]:
                    for ident in (record or {}).get("identifier", []):
                        if ident.get("system") and ident.get("value"):
                            pairs.append((ident["system"], ident["value"]))
    return list(dict.fromkeys(pairs))


class OnDemand:
    """Per API process: the on-demand sources, their fetches under way, one thread pool."""

    def __init__(self, sources: list[SourceSettings], store: Store, reader: Reader):
        self.sources = [src for src in sources if src.on_demand]
        self._store = store
        self._reader = reader
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str, str], Future[SyncSummary]] = {}
        self._built: dict[str, Source] = {}
        self._source_locks = {src.name: threading.Lock() for src in self.sources}
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="on-demand") if self.sources else None

    def before_search(self, query: SearchQuery, guard: Guard) -> None:
        """Fetch stale patients from their archives; 503 if that takes longer than allowed.

        Only the identifiers the request may have fetched are asked for (`guard`: those of its
        patient compartment, or any): a patient-context token cannot make the archive be asked
        about, or time the fetch of, another patient.
        """
        if not self.sources or query.rtype not in ("ImagingStudy", "Patient"):
            return
        pairs = searched_identifiers(query, self._read_patient)
        allowed = guard.fetchable_identifiers() if pairs else None
        if allowed is not None:
            pairs = [pair for pair in pairs if pair in allowed]
        now, _ = instant_now_ms()
        futures: list[Future[SyncSummary]] = []
        deadline = 0.0
        for system, value in pairs:
            for src in self.sources:
                if system not in claimed_systems(src):
                    continue
                on_demand = src.on_demand
                assert on_demand is not None  # self.sources holds the on-demand sources only
                fetched = self._store.fetches.when(src.name, system, value)
                if fetched is not None and now - fetched < on_demand.max_age * 1_000_000:
                    continue
                futures.append(self._start(src, system, value))
                deadline = max(deadline, on_demand.deadline)
        if futures:
            _done, pending = wait(futures, timeout=deadline)
            if pending:
                raise FhirError(
                    503,
                    "transient",
                    "the archive is still being asked for this patient's studies; retry after the time in Retry-After",
                    headers={"Retry-After": str(math.ceil(deadline))},
                )

    def _read_patient(self, rid: str) -> dict | None:
        found = read_current(self._reader, "Patient", rid)
        return orjson.loads(found[2]) if found else None

    def _start(self, src: SourceSettings, system: str, value: str) -> Future[SyncSummary]:
        assert self._pool is not None  # there are on-demand sources, then
        key = (src.name, system, value)
        with self._lock:
            running = self._running.get(key)
            if running is None or running.done():
                running = self._running[key] = self._pool.submit(self._fetch, src, system, value)
            return running

    def _fetch(self, src: SourceSettings, system: str, value: str) -> SyncSummary:
        started, _ = instant_now_ms()
        summary = SyncSummary(src.name)
        try:
            with self._source_locks[src.name]:
                source = self._built.get(src.name) or self._built.setdefault(src.name, src.open())
                ctx = keyed_context(self._store, src)
                for item in source.iter_studies(match={"PatientID": value}):
                    with StudyBatch(self._store, src.name, ctx, summary) as batch:
                        batch.add(item)
            self._store.fetches.mark(src.name, system, value, started)
        except SourceError as exc:
            summary.error = str(exc)
            log.error("on-demand fetch from source %s failed: %s", src.name, exc)
        except Exception as exc:  # noqa: BLE001 - a failed fetch must never break the search that asked for it
            summary.error = describe(exc)
            log.error("on-demand fetch from source %s failed: %s", src.name, describe(exc))
        return summary


def init_app(hooks: Hooks, sources: list[SourceSettings], store: Store, reader: Reader) -> None:
    """Fetch a searched patient's studies from on-demand archives before the first page of a
    search (a before-search hook of the request path, app/api/hooks.py)."""
    on_demand = OnDemand(sources, store, reader)
    if on_demand.sources:
        hooks.before_search.append(on_demand.before_search)
