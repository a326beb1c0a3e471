"""Benchmark: search latency at S, M and L studies on SQLite and PostgreSQL, next to Orthanc's QIDO-RS.

Usage: .venv/bin/python -m scripts.bench_search [--sizes S,M,L] [--databases sqlite,postgresql] [--seconds 3]
           [--rounds 5] [--connections 1] [--orthanc-sizes S,M] [--orthanc-instances 2] [--no-plans]

For each database, every size is loaded into a store of its own (scripts/dataset.py: the
real mapping and the store's batched write) and served by the facade under gunicorn (one
sync worker, as bench_api.py). wrk (Debian package `wrk`) then sends each query over many
real values, loopback only, `--seconds` per run; the sizes take turns within each of
`--rounds` rounds, so drift on a noisy machine hits them alike, and the figure reported is
the median of the rounds' p50 (p95). Query values are chosen so that answers are the same
size at every size: a lookup should cost the same whatever the table holds when an index
serves it, while large answers cost more anyway.

  patient     ImagingStudy?patient=<id>                 patients with 3 to 5 studies
  identifier  ImagingStudy?identifier=<value>           accession number or urn:dicom:uid|urn:oid:<uid>: 1 study
  started+CT  ImagingStudy?started=ge<day>&modality=CT  windows holding the 20 to 60 most recent studies
  name        Patient?name=<family>                     family names that 2 to 5 patients share

Targets: p50 at L at most 1.3x p50 at S on PostgreSQL, at most 2x on SQLite.

Orthanc: the same studies (at most `--orthanc-instances` instances per series, headers only,
posted to /instances) go into an Orthanc started by testbed/orthanc.py and into
a fresh store of each database holding exactly that data; `ImagingStudy?patient=` and
`/dicom-web/studies?PatientID=` for the same patients take turns. Target: FHIR p50 <= Orthanc p50.

Bundle: app/fhir/bundle.py `searchset` for a 50-study page against `orjson.dumps` of the
same 50 resources as dicts. Target <= 1.5x.

Plans: `EXPLAIN (ANALYZE, BUFFERS)` on PostgreSQL (`EXPLAIN QUERY PLAN` on SQLite) of the
SQL the server runs for one value of each query, captured from the app's own Reader.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import orjson
import requests
import yaml

from app.clock import instant_now_ms
from app.config import load_config
from app.fhir.bundle import searchset
from app.identity.keys import patient_id
from app.mapping import map_study
from app.store.reader import Reader
from app.store.repository import Store
from app.store.search_sql import SearchResult
from app.web import create_app
from scripts.bench_api import start
from scripts.dataset import BENCH_KEY, SIZES, ZONE, Archive, archive, load_orthanc, load_store, mapping_context
from testbed.orthanc import OrthancServer, free_port
from testbed.postgres import ADMIN_URL, create_database, drop_database

ROOT = Path(__file__).resolve().parents[1]

POSTGRES_ADMIN = os.environ.get("FACADE_BENCH_POSTGRES", ADMIN_URL)
QUERIES = ["patient", "identifier", "started+CT", "name"]
TARGET = {"sqlite": 2.0, "postgresql": 1.3}
BASE = "/fhir"


# ---------------------------------------------------------------- query values


def _q(value: str) -> str:
    return quote(value, safe="")


def query_paths(arch: Archive, per_query: int = 200, seed: int = 11) -> dict[str, list[str]]:
    """Real values for each query, chosen so the answer size does not grow with the archive."""
    rng = random.Random(seed)
    system = mapping_context().patient_id_system
    patients = [p for p in arch.patients if 3 <= len(p.studies) <= 5]
    picked = rng.sample(patients, min(per_query, len(patients)))
    studies = rng.sample(arch.studies, min(per_query, len(arch.studies)))
    days = sorted((s.day for s in arch.studies), reverse=True)
    families: dict[str, int] = {}
    for p in arch.patients:
        families[p.family] = families.get(p.family, 0) + 1
    names = sorted(f for f, n in families.items() if 2 <= n <= 5)
    return {
        "patient": [f"{BASE}/ImagingStudy?patient={patient_id(system, p.mrn, BENCH_KEY)}" for p in picked],
        "identifier": [
            f"{BASE}/ImagingStudy?identifier=" + (_q(s.accession) if i % 2 else _q(f"urn:dicom:uid|urn:oid:{s.uid}"))
            for i, s in enumerate(studies)
        ],
        "started+CT": [f"{BASE}/ImagingStudy?started=ge{days[k - 1].isoformat()}&modality=CT" for k in range(20, 61)],
        "name": [f"{BASE}/Patient?name={_q(f)}" for f in rng.sample(names, min(per_query, len(names)))],
        "orthanc": [f"/dicom-web/studies?PatientID={_q(p.mrn)}" for p in picked],
    }


def preflight(base: str, paths: list[str]) -> dict:
    """GET every path once (also warms caches): all must answer 200; how many matches and bytes each gives."""
    counts, sizes = [], []
    with requests.Session() as session:
        for path in paths:
            response = session.get(base + path, timeout=60)
            if response.status_code != 200:
                raise SystemExit(f"{path}: HTTP {response.status_code} {response.text[:300]}")
            sizes.append(len(response.content))
            body = response.json()
            if isinstance(body, list):  # QIDO-RS
                counts.append(len(body))
            else:
                counts.append(sum(1 for e in body.get("entry", []) if e["search"]["mode"] == "match"))
    return {"mean": statistics.mean(counts), "min": min(counts), "max": max(counts), "bytes": statistics.mean(sizes)}


# ---------------------------------------------------------------- wrk

WRK_SCRIPT = """
local paths = {%s}
math.randomseed(%d)
request = function() return wrk.format("GET", paths[math.random(#paths)]) end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%d %%d\\n", summary.requests, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def wrk(base: str, paths: list[str], seconds: float, connections: int, workdir: Path, seed: int = 7) -> dict:
    script = workdir / f"paths-{uuid.uuid4().hex[:8]}.lua"
    script.write_text(WRK_SCRIPT % (",".join(json.dumps(p) for p in paths), seed))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    script.unlink()
    found = re.search(r"^RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", out, re.M)
    if not found:
        raise SystemExit(f"wrk gave no result:\n{out}")
    n, status_errors, socket_errors, p50, p95, p99 = map(int, found.groups())
    if status_errors or socket_errors:
        raise SystemExit(f"wrk on {base}: {status_errors} non-2xx and {socket_errors} socket errors:\n{out}")
    return {"requests": n, "p50": p50 / 1000, "p95": p95 / 1000, "p99": p99 / 1000}  # ms


@dataclass
class Samples:
    runs: list[dict] = field(default_factory=list)

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.runs)


# ---------------------------------------------------------------- stores and servers


class Databases:
    """Stores for the benchmark: SQLite files in a work directory, PostgreSQL databases created and dropped here."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.created: list[str] = []

    def url(self, kind: str, label: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{self.workdir / f'{label}.db'}"
        url = create_database(f"bench_search_{label.lower()}", POSTGRES_ADMIN)
        self.created.append(url)
        return url

    def drop(self, url: str) -> None:
        if url.startswith("sqlite:"):
            for suffix in ("", "-wal", "-shm"):
                Path(url.split(":///", 1)[1] + suffix).unlink(missing_ok=True)
            return
        drop_database(url, POSTGRES_ADMIN)
        self.created.remove(url)

    def drop_all(self) -> None:
        for url in list(self.created):
            self.drop(url)


def load(url: str, arch: Archive, max_instances: int | None = None) -> dict:
    store = Store(url, ZONE, None)
    try:
        stats = load_store(store, arch, max_instances)
        if url.startswith("sqlite:"):
            stats["bytes"] = Path(url.split(":///", 1)[1]).stat().st_size
        else:
            with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")  # what autovacuum does soon after a bulk load
                stats["bytes"] = conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar()
    finally:
        store.close()
    return stats


class Facade:
    """The facade on one store, under gunicorn with one sync worker."""

    def __init__(self, url: str, workdir: Path, label: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = workdir / f"config-{label}.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "store": url,
                    "timezone": ZONE,
                    "server": {"base_url": f"{self.base}{BASE}"},
                    "security": {"open": True},
                    "sources": [],
                }
            )
        )
        env = {**os.environ, "IMAGING_FACADE_CONFIG": str(self.config), "PYTHONPATH": str(ROOT)}
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "1",
            "-k",
            "sync",
            "--log-level",
            "warning",
            "-b",
            f"127.0.0.1:{self.port}",
            "app.wsgi:application",
        ]
        self.proc = start(cmd, env, f"{self.base}{BASE}/metadata")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


# ---------------------------------------------------------------- plans


class RecordingReader(Reader):
    """The app's Reader, keeping every statement it runs."""

    def __init__(self, url: str):
        super().__init__(url)
        self.statements: list[tuple[str, list]] = []

    def all(self, sql, params=(), any_values=False):
        self.statements.append((sql, list(params)))
        return super().all(sql, params, any_values)


def statements(config_path: Path, path: str) -> tuple[Reader, list[tuple[str, list]]]:
    """The SQL the app runs for one request, captured in this process through the real routes."""
    config = load_config(config_path)
    app = create_app(config)
    state = app.extensions["imaging-facade"]
    state.reader = reader = RecordingReader(state.store.url)
    response = app.test_client().get(path)
    if response.status_code != 200:
        raise SystemExit(f"{path}: HTTP {response.status_code}")
    return reader, reader.statements


def _plan_nodes(node: dict, out: list) -> None:
    kind = node["Node Type"]
    index = node.get("Index Name")
    relation = node.get("Relation Name")
    label = kind + (f" {index}" if index else f" {relation}" if relation and "Scan" in kind else "")
    out.append(label)
    for child in node.get("Plans", []):
        _plan_nodes(child, out)


def explain(config_path: Path, path: str, full: bool) -> list[str]:
    reader, captured = statements(config_path, path)
    lines = []
    for sql, params in captured:
        lines.append(f"  SQL: {sql}")
        lines.append(f"  params: {params}")
        if reader.is_sqlite:
            details = [row[3] for row in reader.connection.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()]
            scans = [d for d in details if d.startswith("SCAN ") and "subquery" not in d]
            lines.append(f"  full scans: {', '.join(scans) if scans else 'none'}")
            lines.extend(f"    {d}" for d in details)
            continue
        pg_sql = sql.replace("?", "%s")
        plan = reader.connection.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {pg_sql}", params).fetchone()[0][0]
        nodes: list[str] = []
        _plan_nodes(plan["Plan"], nodes)
        seq = [n for n in nodes if n.startswith("Seq Scan")]
        lines.append(f"  nodes: {' > '.join(nodes)}")
        lines.append(
            f"  planning {plan['Planning Time']:.2f} ms, execution {plan['Execution Time']:.2f} ms, shared buffers hit "
            f"{plan['Plan'].get('Shared Hit Blocks', 0)} read {plan['Plan'].get('Shared Read Blocks', 0)}; "
            f"sequential scans: {', '.join(seq) if seq else 'none'}"
        )
        if full:
            text = reader.connection.execute(f"EXPLAIN (ANALYZE, BUFFERS) {pg_sql}", params).fetchall()
            lines.extend(f"    {row[0]}" for row in text)
    return lines


# ---------------------------------------------------------------- bundle cost


def bundle_cost(repeat: int = 7) -> dict:
    """searchset() of a 50-study page against orjson.dumps of the same 50 resources as dicts."""
    arch = archive("S")
    ctx = mapping_context()
    _micros, instant = instant_now_ms()
    resources = []
    for s in range(50):
        study = map_study(arch.record(s), ctx).imaging_study
        resources.append(
            {
                "resourceType": study["resourceType"],
                "id": study["id"],
                "meta": {"versionId": "1", "lastUpdated": instant},
                **{k: v for k, v in study.items() if k not in ("resourceType", "id")},
            }
        )
    stored = [(r["id"], orjson.dumps(r)) for r in resources]  # what the store keeps and the API reads
    result = SearchResult(matches=stored, total=None, has_more=True, includes=[])
    base = "http://127.0.0.1:8080/fhir"
    self_url = f"{base}/ImagingStudy?modality=CT"
    next_url = f"{self_url}&_page=" + "x" * 120

    def bundle():
        return searchset(base, "ImagingStudy", result, self_url, next_url)

    def baseline():
        return orjson.dumps(resources)

    number = 50
    ours, theirs = [], []
    for _ in range(repeat):  # interleaved, so drift hits both
        ours.append(min(timeit.repeat(bundle, number=number, repeat=3)) / number)
        theirs.append(min(timeit.repeat(baseline, number=number, repeat=3)) / number)
    return {
        "bundle_ms": min(ours) * 1000,
        "dumps_ms": min(theirs) * 1000,
        "bytes": len(bundle()),
        "resource_bytes": statistics.mean(len(c) for _i, c in stored),
    }


# ---------------------------------------------------------------- runs


def fmt(ms: float) -> str:
    return f"{ms:.2f}"


def run_database(kind: str, sizes: list[str], args, dbs: Databases, workdir: Path) -> dict:
    """Load every size, then measure the four queries with the sizes taking turns."""
    results: dict = {"load": {}, "matches": {}, "samples": {}}
    urls, facades, paths = {}, {}, {}
    try:
        for size in sizes:
            arch = archive(size)
            urls[size] = dbs.url(kind, size)
            print(
                f"[{kind}] loading {size}: {arch.size} studies, {len(arch.patients)} patients, "
                f"{arch.instances()} instances ...",
                flush=True,
            )
            stats = load(urls[size], arch)
            results["load"][size] = stats
            print(
                f"[{kind}] loaded {size} in {stats['seconds']:.0f} s ({stats['outcomes']}, "
                f"{stats['bytes'] / 2**20:.0f} MiB)",
                flush=True,
            )
            paths[size] = query_paths(arch)
        for size in sizes:
            facades[size] = Facade(urls[size], workdir, f"{kind}-{size}")
            results["matches"][size] = {q: preflight(facades[size].base, paths[size][q]) for q in QUERIES}
        for r in range(args.rounds):
            for q in QUERIES:
                for size in sizes:
                    sample = wrk(facades[size].base, paths[size][q], args.seconds, args.connections, workdir, seed=r)
                    results["samples"].setdefault((q, size), Samples()).runs.append(sample)
            print(f"[{kind}] round {r + 1}/{args.rounds} done", flush=True)
        if args.plans:
            results["plans"] = {}
            for size in sizes:
                full = size == sizes[-1]
                results["plans"][size] = {q: explain(facades[size].config, paths[size][q][0], full) for q in QUERIES}
    finally:
        for facade in facades.values():
            facade.stop()
        for url in urls.values():
            dbs.drop(url)
    return results


def print_database(kind: str, sizes: list[str], results: dict, args) -> None:
    print(
        f"\n== {kind}: p50 / p95 in ms (median of {args.rounds} rounds of {args.seconds}s, wrk "
        f"{args.connections} connection(s), gunicorn 1 sync worker)"
    )
    for size in sizes:
        arch_size = SIZES[size]
        load_stats = results["load"][size]
        print(
            f"  {size}: {arch_size} studies loaded in {load_stats['seconds']:.0f} s, "
            f"{load_stats['bytes'] / 2**20:.0f} MiB"
        )
    head = f"  {'query':11}" + "".join(f" {s + ' p50':>9} {s + ' p95':>9} {s + ' n':>6} {s + ' kB':>6}" for s in sizes)
    has_ratio = "S" in sizes and len(sizes) > 1
    last = sizes[-1]
    if has_ratio:
        head += f" {last + '/S p50':>9} {'target':>7}"
    print(head)
    verdicts = []
    for q in QUERIES:
        line = f"  {q:11}"
        for size in sizes:
            sample = results["samples"][(q, size)]
            matches = results["matches"][size][q]
            line += (
                f" {fmt(sample.median('p50')):>9} {fmt(sample.median('p95')):>9} "
                f"{matches['mean']:6.1f} {matches['bytes'] / 1000:6.0f}"
            )
        if has_ratio:
            ratio = results["samples"][(q, last)].median("p50") / results["samples"][(q, "S")].median("p50")
            ok = ratio <= TARGET[kind]
            verdicts.append(ok)
            line += f" {ratio:9.2f} {'<= ' + str(TARGET[kind]):>7} {'ok' if ok else 'MISSED'}"
        print(line)
    print("  n = mean matches per request, kB = mean answer size (the same at every size, by choice of values)")
    for size in results.get("plans", {}):
        print(f"\n  -- plans at {size} ({'EXPLAIN QUERY PLAN' if kind == 'sqlite' else 'EXPLAIN (ANALYZE, BUFFERS)'})")
        for q, lines in results["plans"][size].items():
            print(f"  [{q}]")
            for line in lines:
                print("  " + line)


def run_orthanc(size: str, kinds: list[str], args, dbs: Databases, workdir: Path) -> dict:
    arch = archive(size)
    cap = args.orthanc_instances
    out = {"size": size, "instances": arch.instances(cap), "full_instances": arch.instances(), "rows": {}}
    with OrthancServer(startup_timeout=60) as pacs:
        print(
            f"[orthanc] loading {size}: {arch.size} studies, {out['instances']} instances "
            f"(at most {cap} per series) ...",
            flush=True,
        )
        out["orthanc_load"] = load_orthanc(pacs.url, arch, cap)
        print(f"[orthanc] loaded in {out['orthanc_load']['seconds']:.0f} s", flush=True)
        paths = query_paths(arch)
        out["orthanc_matches"] = preflight(pacs.url, paths["orthanc"])
        for kind in kinds:
            url = dbs.url(kind, f"orthanc{size}")
            facade = None
            try:
                load(url, arch, cap)
                facade = Facade(url, workdir, f"{kind}-orthanc-{size}")
                matches = preflight(facade.base, paths["patient"])
                ours, theirs = Samples(), Samples()
                for r in range(args.rounds):
                    ours.runs.append(wrk(facade.base, paths["patient"], args.seconds, args.connections, workdir, r))
                    theirs.runs.append(wrk(pacs.url, paths["orthanc"], args.seconds, args.connections, workdir, r))
                out["rows"][kind] = {"ours": ours, "theirs": theirs, "matches": matches}
            finally:
                if facade:
                    facade.stop()
                dbs.drop(url)
    return out


def print_orthanc(runs: list[dict], args) -> None:
    print(
        f"\n== Orthanc side by side: ImagingStudy?patient= vs Orthanc /dicom-web/studies?PatientID= "
        f"(same patients, 3-5 studies each), p50 / p95 in ms, median of {args.rounds} rounds"
    )
    print(
        f"  {'size':4} {'store':10} {'instances':>20} {'FHIR p50':>9} {'p95':>7} {'QIDO p50':>9} {'p95':>7} "
        f"{'FHIR/QIDO':>9} target"
    )
    for run in runs:
        for kind, row in run["rows"].items():
            ours, theirs = row["ours"], row["theirs"]
            ratio = ours.median("p50") / theirs.median("p50")
            print(
                f"  {run['size']:4} {kind:10} {str(run['instances']) + ' of ' + str(run['full_instances']):>20} "
                f"{fmt(ours.median('p50')):>9} {fmt(ours.median('p95')):>7} {fmt(theirs.median('p50')):>9} "
                f"{fmt(theirs.median('p95')):>7} {ratio:9.2f} <= 1.0 {'ok' if ratio <= 1.0 else 'MISSED'}"
            )
    for run in runs:
        print(
            f"  {run['size']}: Orthanc got at most {args.orthanc_instances} instances per series "
            f"({run['instances']} of {run['full_instances']}; loaded in {run['orthanc_load']['seconds']:.0f} s), "
            "and each store compared with it holds exactly those"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="S,M,L")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--orthanc-sizes", default="S,M", help="sizes compared with Orthanc; '' for none")
    parser.add_argument("--orthanc-instances", type=int, default=2, help="at most this many instances per series")
    parser.add_argument("--no-plans", dest="plans", action="store_false")
    parser.add_argument("--no-bundle", dest="bundle", action="store_false")
    parser.add_argument("--workdir", type=Path, default=None, help="where SQLite stores go (default: a temp dir)")
    args = parser.parse_args(argv)
    sizes = [s for s in SIZES if s in args.sizes.split(",")]
    kinds = [k for k in ("sqlite", "postgresql") if k in args.databases.split(",")]
    orthanc_sizes = [s for s in SIZES if s in args.orthanc_sizes.split(",")]
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    print(f"cpu: {os.cpu_count()}; sizes {sizes}; databases {kinds}; Orthanc at {orthanc_sizes}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-search-", dir=args.workdir))
    dbs = Databases(workdir)
    started = time.perf_counter()
    try:
        bundle = bundle_cost() if args.bundle else None
        results = {kind: run_database(kind, sizes, args, dbs, workdir) for kind in kinds}
        orthanc_runs = [run_orthanc(size, kinds, args, dbs, workdir) for size in orthanc_sizes]
    finally:
        dbs.drop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    for kind in kinds:
        print_database(kind, sizes, results[kind], args)
    if orthanc_runs:
        print_orthanc(orthanc_runs, args)
    if bundle:
        ratio = bundle["bundle_ms"] / bundle["dumps_ms"]
        print(
            f"\n== Bundle cost: searchset() of a 50-study page {fmt(bundle['bundle_ms'])} ms vs orjson.dumps of "
            f"the same 50 dicts {fmt(bundle['dumps_ms'])} ms: ratio {ratio:.2f} (target <= 1.5, "
            f"{'ok' if ratio <= 1.5 else 'MISSED'}); {bundle['bytes']} bytes, "
            f"{bundle['resource_bytes']:.0f} bytes per study"
        )
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
