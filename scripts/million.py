"""The million-study archive of bench_million.py: the S/M/L archive of scripts/dataset.py at any
size, spread over many archives, loaded into a store the way a sync writes it.

Patients belong to one archive each: nine in ten to the regional archive `bench` (so one
source holds most studies, as the network's central PACS does), the rest spread over
`SITES` site archives. Each archive names its patients in its own identifier system, as
separate hospitals do.

The load is resumable: batches commit in study order, so a store holding k studies of the
plan holds its first k (less at most one batch, which is stored again: unchanged).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator

from app.identity.reconcile import pending, reconcile_pending
from app.identity.settings import IdentityConfig
from app.mapping import map_endpoint, map_study
from app.store.repository import Store
from scripts.dataset import SOURCE, ZONE, Archive, mapping_context

SITES = 40
#: studies per transaction: what a sync batches (app/sync/batch.py BATCH_SIZE) times ten; the
#: writes per study are the same, only the commits are fewer
BATCH = 200


def source_of(patient: int) -> str:
    """The archive that holds a patient's studies."""
    return SOURCE if patient % 10 else f"site{(patient // 10) % SITES + 1:02d}"


def sources() -> list[str]:
    return [SOURCE] + [f"site{k:02d}" for k in range(1, SITES + 1)]


_PLANS: dict[tuple[int, int], Archive] = {}


def plan(size: int, seed: int = 7) -> Archive:
    """The archive of `size` studies (planned once per process; forked workers inherit it)."""
    if (size, seed) not in _PLANS:
        _PLANS[(size, seed)] = Archive(size, seed)
    return _PLANS[(size, seed)]


def _map_chunk(args: tuple) -> list[tuple[str, dict, dict]]:
    """Worker: (source, ImagingStudy, Patient) of studies start..stop, mapped as their archive's sync maps them."""
    size, seed, start, stop, max_instances = args
    arch = plan(size, seed)
    out = []
    for s in range(start, stop):
        source = source_of(arch.studies[s].patient)
        mapped = map_study(arch.record(s, max_instances), mapping_context(source))
        out.append((source, mapped.imaging_study, mapped.patient))
    return out


def stored_prefix(store: Store, arch: Archive) -> int:
    """How many of `arch`'s first studies the store holds, all of them (parallel writers stopped
    mid-load may have stored a chunk or two beyond a gap)."""
    with store.engine.connect() as conn:
        stored = set(conn.exec_driver_sql("SELECT study_uid FROM study_copy").scalars())
    return next((s for s, study in enumerate(arch.studies) if study.uid not in stored), arch.size)


def stored_studies(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM study_copy").scalar() or 0)


def store_chunk(store: Store, mapped: list[tuple[str, dict, dict]], rules: IdentityConfig | None) -> None:
    """Store a chunk as a sync stores a batch (app/sync/batch.py StudyBatch._store): per source
    one transaction, each study's copy and patient, then (with `rules`) identity matching for
    its patient."""
    by_source: dict[str, list[tuple[dict, dict]]] = {}
    for source, study, patient in mapped:
        by_source.setdefault(source, []).append((study, patient))
    for source, studies in by_source.items():
        with store.batch() as conn:
            store.studies.read_ahead(conn, source, [study["id"] for study, _ in studies])
            for study, patient in studies:
                store.studies.put(study, patient, source, conn=conn)
                work = pending(conn, patient["id"], rules) if rules is not None else None
                if work is not None and rules is not None:
                    with store.savepoint(conn):
                        reconcile_pending(conn, store, work, rules)


def chunks(arch: Archive, size: int = BATCH) -> list[tuple[int, int]]:
    """Ranges of about `size` studies that start and end with a patient's studies, so that
    writers in parallel never write one patient at once."""
    out, start = [], 0
    for s in range(1, arch.size):
        if s - start >= size and arch.studies[s].patient != arch.studies[s - 1].patient:
            out.append((start, s))
            start = s
    out.append((start, arch.size))
    return out


_WRITER: dict = {}


def _load_chunk(args: tuple) -> int:
    """Writer process: map studies start..stop and store them; returns how many."""
    size, seed, start, stop, max_instances, url, match = args
    if "store" not in _WRITER:
        _WRITER["store"] = Store(url, ZONE)
    store_chunk(
        _WRITER["store"], _map_chunk((size, seed, start, stop, max_instances)), IdentityConfig() if match else None
    )
    return stop - start


def load(
    store: Store,
    arch: Archive,
    max_instances: int | None,
    writers: int = 1,
    match: bool = False,
    until: float | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> int:
    """Load what the store lacks of `arch`, `writers` processes each mapping and storing
    whole chunks; stop at its end or after `until` (time.time()). Returns the number of its
    studies the store then holds."""
    for source in sources():
        store.resources.put(map_endpoint(mapping_context(source)))
    with store.engine.connect() as conn:
        stored = set(conn.exec_driver_sql("SELECT study_uid FROM study_copy").scalars())
    todo = [
        (arch.size, arch.seed, a, b, max_instances, store.url, match)
        for a, b in chunks(arch)
        if not all(arch.studies[s].uid in stored for s in range(a, b))
    ]
    done = sum(1 for s in arch.studies if s.uid in stored)
    del stored
    _PLANS[(arch.size, arch.seed)] = arch  # forked writers inherit the plan
    began = time.perf_counter()
    if writers <= 1:
        results: Iterator[int] = (_load_chunk(chunk) for chunk in todo)
        pool = None
    else:
        pool = multiprocessing.get_context("fork").Pool(writers)
        results = pool.imap(_load_chunk, todo)
    try:
        for count in results:
            done += count
            if progress:
                progress(done, time.perf_counter() - began)
            if until is not None and time.time() >= until:
                break
    finally:
        if pool is not None:
            pool.terminate()  # a writer stopped mid-chunk rolls back; the next load stores the chunk
            pool.join()
    store.analyze()
    return done


def loaded_prefix(arch: Archive, loaded: int) -> Iterator[int]:
    """Patients all of whose studies are among the first `loaded`."""
    for p, patient in enumerate(arch.patients):
        if patient.studies and patient.studies[-1] < loaded:
            yield p
