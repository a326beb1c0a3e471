"""Benchmark: a store of a million studies on PostgreSQL, against one of 300.

Usage:
  .venv/bin/python -m scripts.bench_million load [--studies 1000000] [--minutes M] [--max-instances 2]
  .venv/bin/python -m scripts.bench_million measure [--seconds 3] [--rounds 5] [--reconcile]
  .venv/bin/python -m scripts.bench_million drop

`load` fills the database `bench_million` (made on the suite's PostgreSQL server, see
testbed/postgres.py; kept between runs) with the archive of scripts/million.py: the
generated archive of scripts/dataset.py at `--studies`, patients spread over 41 archives,
mapped by the real mapping and written as a sync writes (app/store/batch.py, one transaction
per source and chunk). It resumes where the store stands, prints its progress, and stops
after `--minutes` if given; `measure` then works on whatever it holds.

`measure` loads the 300-study archive into a database of its own and serves both under
gunicorn (one sync worker, scripts/bench_search.py). wrk sends each query over many real
values, the two stores taking turns, `--rounds` times; the figure is the median of the
rounds' p50. Query values are chosen so answers are the same size in both stores:

  patient       ImagingStudy?patient=<id>                          patients with 3 to 5 studies
  identifier    ImagingStudy?identifier=<accession>                1 study
  started+CT    ImagingStudy?started=ge<day>&modality=CT           the 20 to 60 most recent studies
  patient.name  ImagingStudy?patient.name=<family>                 families of 2 to 5 patients
  revinclude    Patient?_id=<id>&_revinclude=ImagingStudy:patient  a patient with 3 to 5 studies

Target: p50 in the big store at most 1.3x p50 in the small one. It then prints the plan
PostgreSQL chooses (EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)) for the SQL the server runs for
one value of each query, and fails the query if any node is a sequential scan of a big table.

Then the size on disk per table and per study (pg_total_relation_size: table, indexes, TOAST).

With `--reconcile`: a full sync of one archive (`--source`, default site01) from a listing
that no longer shows one study in `--gone`, through app/sync/run.py sync_source, in a child
process: minutes, peak resident memory (target: under 300 MB), and the deletions found.
The listing is replayed from the generated archive with no network, so the figure is the
facade's own cost of reconciling, not the archive's.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import orjson

from app.identity.keys import patient_id
from app.sources.base import StudyRecord
from app.sources.queried import _packed, exact_bytes
from app.sources.settings import SourceSettings
from app.store.repository import Store
from app.sync import sync_source
from scripts import million
from scripts.bench_api import ROOT
from scripts.bench_search import Facade, Samples, preflight, statements, wrk
from scripts.dataset import BENCH_KEY, SOURCE, ZONE, Archive, mapping_context
from testbed.postgres import ADMIN_URL, create_database, drop_database

POSTGRES_ADMIN = os.environ.get("FACADE_BENCH_POSTGRES", ADMIN_URL)
DATABASE = "bench_million"
SMALL = 300
TARGET = 1.3
QUERIES = ["patient", "identifier", "started+CT", "patient.name", "revinclude"]
BASE = "/fhir"
#: tables that grow with the archive: a sequential scan of one is a query that slows as it grows
BIG_TABLES = {
    "resource",
    "resource_version",
    "idx_token",
    "idx_string",
    "idx_date",
    "idx_reference",
    "study_copy",
    "patient_contribution",
    "patient_match",
    "patient_block",
}


def database_url(name: str | None = None) -> str:
    """The URL of the benchmark's database, made if missing (kept between runs, so a load resumes)."""
    from sqlalchemy import create_engine, text

    name = name or os.environ.get("FACADE_BENCH_MILLION_DATABASE", DATABASE)
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).scalar():
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def cmd_load(args) -> int:
    store = Store(database_url(), ZONE)
    try:
        t0 = time.perf_counter()
        arch = million.plan(args.studies)
        print(
            f"planned {arch.size} studies of {len(arch.patients)} patients in {time.perf_counter() - t0:.0f} s; "
            f"{million.stored_studies(store)} stored already",
            flush=True,
        )
        last = [0.0]
        first = million.stored_studies(store)

        def progress(done: int, seconds: float) -> None:
            if seconds - last[0] >= 30 or done == arch.size:
                last[0] = seconds
                rate = (done - first) / seconds if seconds else 0.0
                print(f"  {done} studies ({rate:.0f}/s this run), {seconds:.0f} s", flush=True)

        until = time.time() + args.minutes * 60 if args.minutes else None
        done = million.load(store, arch, args.max_instances, args.writers, args.match, until, progress)
        print(f"store holds {done} of {arch.size} studies", flush=True)
    finally:
        store.close()
    return 0


# ---------------------------------------------------------------- queries


def query_paths(arch: Archive, loaded: int, per_query: int = 200, seed: int = 11) -> dict[str, list[str]]:
    """Real values among the first `loaded` studies, chosen so answers do not grow with the store."""
    rng = random.Random(seed)
    patients = list(million.loaded_prefix(arch, loaded))
    few = [p for p in patients if 3 <= len(arch.patients[p].studies) <= 5]
    picked = rng.sample(few, min(per_query, len(few)))
    ids = [
        patient_id(mapping_context(million.source_of(p)).patient_id_system, arch.patients[p].mrn, BENCH_KEY)
        for p in picked
    ]
    studies = [arch.studies[s] for s in rng.sample(range(loaded), min(per_query, loaded))]
    days = sorted((arch.studies[s].day for s in range(loaded)), reverse=True)
    families: dict[str, int] = {}
    for p in patients:
        families[arch.patients[p].family] = families.get(arch.patients[p].family, 0) + 1
    names = sorted(f for f, n in families.items() if 2 <= n <= 5)
    return {
        "patient": [f"{BASE}/ImagingStudy?patient={i}" for i in ids],
        "identifier": [f"{BASE}/ImagingStudy?identifier={quote(s.accession, safe='')}" for s in studies],
        "started+CT": [f"{BASE}/ImagingStudy?started=ge{days[k - 1].isoformat()}&modality=CT" for k in range(20, 61)],
        "patient.name": [
            f"{BASE}/ImagingStudy?patient.name={quote(f, safe='')}"
            for f in rng.sample(names, min(per_query, len(names)))
        ],
        "revinclude": [f"{BASE}/Patient?_id={i}&_revinclude=ImagingStudy:patient" for i in ids],
    }


# ---------------------------------------------------------------- plans


def _nodes(node: dict, out: list[dict]) -> None:
    out.append(node)
    for child in node.get("Plans", []):
        _nodes(child, out)


def plans(config: Path, path: str) -> tuple[list[str], list[str]]:
    """The plan of each statement the server runs for `path`: printable lines, and the
    sequential scans of big tables in them."""
    reader, captured = statements(config, path)
    lines, seq = [], []
    for sql, params in captured:
        pg_sql = sql.replace("?", "%s")
        plan = reader.connection.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {pg_sql}", params).fetchone()[0][0]
        nodes: list[dict] = []
        _nodes(plan["Plan"], nodes)
        labels = []
        for node in nodes:
            kind, index, relation = node["Node Type"], node.get("Index Name"), node.get("Relation Name")
            labels.append(kind + (f" {index}" if index else f" {relation}" if relation else ""))
            if kind == "Seq Scan" and relation in BIG_TABLES:
                seq.append(relation)
        lines.append(f"    SQL: {sql}")
        lines.append(f"    nodes: {' > '.join(labels)}")
        lines.append(
            f"    execution {plan['Execution Time']:.2f} ms (planning {plan['Planning Time']:.2f} ms), shared buffers "
            f"hit {plan['Plan'].get('Shared Hit Blocks', 0)} read {plan['Plan'].get('Shared Read Blocks', 0)}"
        )
    reader.close()
    return lines, seq


# ---------------------------------------------------------------- sizes


def sizes(url: str) -> list[tuple[str, int, int]]:
    """(table, total bytes with indexes and TOAST, index bytes) of the store's tables, largest first."""
    store = Store(url, ZONE)
    try:
        with store.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT relname, pg_total_relation_size(oid), pg_indexes_size(oid) FROM pg_class "
                "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY 2 DESC"
            ).all()
    finally:
        store.close()
    return [(r[0], int(r[1]), int(r[2])) for r in rows]


def vacuum(url: str) -> float:
    """VACUUM ANALYZE (what autovacuum does soon after a bulk load: index-only scans need the
    visibility map); seconds it took."""
    store = Store(url, ZONE)
    began = time.perf_counter()
    try:
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    finally:
        store.close()
    return time.perf_counter() - began


def cmd_measure(args) -> int:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    big_url = database_url()
    store = Store(big_url, ZONE)
    loaded = million.stored_studies(store)
    store.close()
    if loaded < SMALL:
        raise SystemExit("the million store is empty: run `bench_million load` first")
    print(f"big store: {loaded} studies; planning the archive ...", flush=True)
    arch = million.plan(args.studies)
    store = Store(big_url, ZONE)
    prefix = million.stored_prefix(store, arch)
    store.close()
    print(f"queries use the first {prefix} studies of the archive, all stored", flush=True)
    small_arch = million.plan(SMALL)
    work = Path(tempfile.mkdtemp(prefix="bench-million-"))
    small_url = create_database("bench_million_small", POSTGRES_ADMIN)
    facades: dict[str, Facade] = {}
    try:
        small = Store(small_url, ZONE)
        million.load(small, small_arch, args.max_instances, writers=1)
        small.close()
        print(f"small store: {SMALL} studies loaded", flush=True)
        seconds = vacuum(big_url)
        vacuum(small_url)
        print(f"VACUUM ANALYZE of the big store: {seconds:.0f} s", flush=True)
        paths = {"big": query_paths(arch, prefix), "small": query_paths(small_arch, SMALL)}
        facades = {"big": Facade(big_url, work, "big"), "small": Facade(small_url, work, "small")}
        matches = {k: {q: preflight(facades[k].base, paths[k][q]) for q in QUERIES} for k in facades}
        samples: dict[tuple[str, str], Samples] = {}
        for r in range(args.rounds):
            for q in QUERIES:
                for k in ("small", "big"):
                    run = wrk(facades[k].base, paths[k][q], args.seconds, 1, work, seed=r)
                    samples.setdefault((q, k), Samples()).runs.append(run)
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        print(
            f"\n== search, p50 / p95 in ms (median of {args.rounds} rounds of {args.seconds} s, wrk 1 connection, "
            "gunicorn 1 sync worker)"
        )
        print(f"  {'query':13} {'300 p50':>8} {'p95':>7} {'n':>5} {'big p50':>8} {'p95':>7} {'n':>5} {'ratio':>6}")
        missed = []
        for q in QUERIES:
            s, b = samples[(q, "small")], samples[(q, "big")]
            ratio = b.median("p50") / s.median("p50")
            ok = ratio <= TARGET
            if not ok:
                missed.append(q)
            print(
                f"  {q:13} {s.median('p50'):8.2f} {s.median('p95'):7.2f} {matches['small'][q]['mean']:5.1f} "
                f"{b.median('p50'):8.2f} {b.median('p95'):7.2f} {matches['big'][q]['mean']:5.1f} {ratio:6.2f} "
                f"{'ok' if ok else 'MISSED'} (target <= {TARGET})"
            )
        print(f"  big = {loaded} studies; n = mean matches per request")
        print(f"\n== plans in the big store ({loaded} studies), EXPLAIN (ANALYZE, BUFFERS)")
        scans = {}
        for q in QUERIES:
            lines, seq = plans(facades["big"].config, paths["big"][q][0])
            scans[q] = seq
            print(f"  [{q}] sequential scans of big tables: {', '.join(seq) if seq else 'none'}")
            for line in lines:
                print(line)
        print(f"\n== size of the big store ({loaded} studies)")
        total = 0
        for table, size, index in sizes(big_url):
            total += size
            if size >= 2**20:
                print(
                    f"  {table:22} {size / 2**20:9.0f} MiB (indexes {index / 2**20:6.0f}) {size / loaded:8.0f} B/study"
                )
        print(f"  {'all tables':22} {total / 2**20:9.0f} MiB {total / loaded:26.0f} B/study")
        for q, seq in scans.items():
            if seq:
                missed.append(f"{q} (sequential scan)")
        settle(big_url)
        if args.reconcile:
            reconcile(args, loaded)
        if missed:
            print(f"\nMISSED: {', '.join(missed)}")
            return 1
    finally:
        for facade in facades.values():
            facade.stop()
        drop_database(small_url, POSTGRES_ADMIN)
        shutil.rmtree(work, ignore_errors=True)
    return 0


# ---------------------------------------------------------------- reconciliation


class ListedArchive:
    """The regional archive as a DICOMweb source reads it, with no network: the study-level
    listing held as JSON bytes (app/sources/queried.py holds it so), each study's series and
    instances made when it is read. Every `gone`-th study is missing from the listing."""

    def __init__(self, arch: Archive, stored: set[str], max_instances: int | None, gone: int, name: str):
        self.arch = arch
        self.max_instances = max_instances
        self.name = name
        self.stats: dict = {}
        self.listing_complete = True
        self.answers_queries = True
        self.change_feed = None
        held = [s for s, study in enumerate(arch.studies) if study.uid in stored]
        self.numbers = [s for k, s in enumerate(held) if (k + 1) % gone]
        self.missing = len(held) - len(self.numbers)

    def total(self, match=None) -> int:
        return len(self.numbers)

    def iter_studies(self, match=None):
        listing = [(s, exact_bytes(orjson.dumps(self.arch.record(s, self.max_instances).attrs))) for s in self.numbers]
        for s, packed in listing:
            attrs = orjson.loads(packed)
            record = self.arch.record(s, self.max_instances)
            yield StudyRecord(uid=record.uid, attrs=attrs, series=record.series)


def settle(url: str) -> None:
    """The step that ends a full sync of the largest archive: which of its studies the listing
    did not show (StudyCopies.not_seen_since, over every copy the archive holds)."""
    store = Store(url, ZONE)
    try:
        with store.engine.connect() as conn:
            held = conn.exec_driver_sql("SELECT count(*) FROM study_copy WHERE source = %s", (SOURCE,)).scalar()
        began = time.perf_counter()
        gone = store.studies.not_seen_since(SOURCE, 1)  # none is older: the cost of reading them all
        seconds = time.perf_counter() - began
    finally:
        store.close()
    print(
        f"\n== settling a full sync of {SOURCE} ({held} studies): not_seen_since read them in {seconds * 1000:.0f} ms "
        f"({len(gone)} gone)"
    )


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reconcile_child(args) -> None:
    """In a process of its own: a full sync of one archive; prints its figures as JSON."""
    arch = million.plan(args.studies)
    store = Store(database_url(), ZONE)
    with store.engine.connect() as conn:
        stored = set(
            conn.exec_driver_sql("SELECT study_uid FROM study_copy WHERE source = %s", (args.source,)).scalars()
        )
    source = ListedArchive(arch, stored, args.max_instances, args.gone, args.source)
    del stored
    settings = SourceSettings(
        name=args.source,
        type="dicomweb",
        timezone=ZONE,
        patient_id_system=mapping_context(args.source).patient_id_system,
        protocol=None,  # type: ignore[arg-type]  # the listing is replayed: nothing is opened
    )
    with open("/proc/self/clear_refs", "w") as f:  # the peak from here on is the sync's (proc(5))
        f.write("5")
    baseline = _rss_mb("VmRSS")
    began = time.perf_counter()
    last = [began]

    def progress(summary, total) -> None:
        now = time.perf_counter()
        if now - last[0] >= 60:
            last[0] = now
            done = summary.new + summary.updated + summary.unchanged
            print(f"  reconciling: {done} of {total} studies, {now - began:.0f} s", file=sys.stderr, flush=True)

    summary = sync_source(store, settings, progress=progress, source=source)  # type: ignore[arg-type]
    seconds = time.perf_counter() - began
    store.close()
    out = {
        "listed": len(source.numbers),
        "missing": source.missing,
        "seconds": seconds,
        "baseline_mb": baseline,
        "peak_mb": _rss_mb("VmHWM"),
        **{k: getattr(summary, k) for k in ("new", "updated", "unchanged", "deleted", "failed")},
    }
    print(orjson.dumps(out).decode())


def reconcile(args, loaded: int) -> None:
    print(f"\n== full reconciliation of source {args.source} ({loaded} studies in the store) ...", flush=True)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.bench_million",
            "reconcile-child",
            "--studies",
            str(args.studies),
            "--max-instances",
            str(args.max_instances),
            "--gone",
            str(args.gone),
            "--source",
            args.source,
        ],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    r = orjson.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"  listed {r['listed']} studies ({r['missing']} gone from the listing) in {r['seconds'] / 60:.1f} min "
        f"({r['listed'] / r['seconds']:.0f} studies/s): {r['unchanged']} unchanged, {r['updated']} updated, "
        f"{r['new']} new, {r['deleted']} deleted"
    )
    print(
        f"  peak resident {r['peak_mb']:.0f} MB; {r['baseline_mb']:.0f} MB just before (the archive's generator "
        f"plan); the sync's own: {r['peak_mb'] - r['baseline_mb']:.0f} MB (target: under 300 MB)"
    )


def cmd_listing(args) -> int:
    """Resident memory of a DICOMweb source's listing of `--studies` studies, as
    app/sources/queried.py makes it: every answer parsed, then each packed as JSON bytes and
    held until the study is read."""
    arch = Archive(args.studies)
    answers = (arch.record(s, 1).attrs for s in range(args.studies))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    baseline = _rss_mb("VmRSS")
    listing = [(attrs, []) for attrs in answers]  # QueriedArchive._list_studies: (attributes, repairs)
    held = _packed([attrs for attrs, _ in listing])
    del listing
    peak, after = _rss_mb("VmHWM"), _rss_mb("VmRSS")
    per = (after - baseline) * 2**20 / args.studies
    print(
        f"listing of {args.studies} studies: {peak - baseline:.0f} MB at its peak (parsed answers), "
        f"{after - baseline:.0f} MB held while the sync reads them ({per:.0f} B per study, {len(held)} answers)"
    )
    return 0


def cmd_drop(_args) -> int:
    drop_database(database_url(), POSTGRES_ADMIN)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load")
    load.add_argument("--studies", type=int, default=1_000_000)
    load.add_argument("--minutes", type=float, default=None, help="stop after this long (resume later)")
    load.add_argument("--max-instances", type=int, default=2, help="at most this many instances per series")
    load.add_argument("--writers", type=int, default=3, help="processes mapping and storing chunks at once")
    load.add_argument("--match", action="store_true", help="also run identity matching per patient, as a sync does")
    measure = sub.add_parser("measure")
    measure.add_argument("--studies", type=int, default=1_000_000, help="the --studies the store was loaded with")
    measure.add_argument("--max-instances", type=int, default=2, help="the --max-instances it was loaded with")
    measure.add_argument("--seconds", type=int, default=3)
    measure.add_argument("--rounds", type=int, default=5)
    measure.add_argument("--reconcile", action="store_true", help="also a full sync of the regional archive")
    measure.add_argument("--gone", type=int, default=1000, help="with --reconcile: every N-th study is deleted")
    measure.add_argument("--source", default="site01", help="with --reconcile: the archive reconciled")
    listing = sub.add_parser("listing")
    listing.add_argument("--studies", type=int, default=100_000)
    child = sub.add_parser("reconcile-child")
    child.add_argument("--studies", type=int, required=True)
    child.add_argument("--max-instances", type=int, required=True)
    child.add_argument("--gone", type=int, required=True)
    child.add_argument("--source", required=True)
    sub.add_parser("drop")
    args = parser.parse_args(argv)
    if args.command == "load":
        return cmd_load(args)
    if args.command == "measure":
        return cmd_measure(args)
    if args.command == "reconcile-child":
        reconcile_child(args)
        return 0
    if args.command == "listing":
        return cmd_listing(args)
    return cmd_drop(args)


if __name__ == "__main__":
    sys.exit(main())
