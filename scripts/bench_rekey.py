"""How long re-keying Patient ids takes (`imaging-facade db upgrade` on a store of the old,
unkeyed ids; app/identity/rekey.py), so a reader can extrapolate to a million studies.

Builds a PostgreSQL (default) or SQLite store of N studies of the million-study archive
(scripts/million.py) with the old ids, then re-keys it in a child process and prints studies/s,
Patients/s and the child's peak memory. The baseline, measured in the same run on the same
store, is reading every row the re-key reads (a lower bound: a re-key reads and writes them).

    .venv/bin/python scripts/bench_rekey.py --studies 20000
    .venv/bin/python scripts/bench_rekey.py --studies 5000 --sqlite /tmp/rekey.db
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import resource
import sys
import time
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.identity import keys
from app.identity import rekey as rekeying
from app.identity.settings import DEFAULT
from app.store import patient_ids
from app.store.engine import make_engine
from app.store.repository import Store
from scripts import million
from scripts.dataset import ZONE

DATABASE = "facade_bench_rekey"
ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _unkeyed(key: bytes, text_: str) -> str:
    return hashlib.sha256(text_.encode("utf-8")).hexdigest()[:40]


def fresh_postgres() -> str:
    from sqlalchemy import create_engine

    admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DATABASE}"'))
        conn.execute(text(f'CREATE DATABASE "{DATABASE}"'))
    admin.dispose()
    return ADMIN.rsplit("/", 1)[0] + f"/{DATABASE}"


def build_old_store(url: str, studies: int, writers: int) -> None:
    """N studies stored with the old unkeyed Patient ids (writers forked after the digest is made
    unkeyed inherit it), then the settings that say otherwise removed."""
    keys._digest = _unkeyed  # type: ignore[assignment]  # the release before the key, stood in for
    store = Store(url, ZONE)
    try:
        began = time.perf_counter()
        million.load(store, million.plan(studies), max_instances=4, writers=writers, match=True)
        print(f"built {studies} studies with old ids in {time.perf_counter() - began:.1f} s")
    finally:
        store.close()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text("DELETE FROM setting WHERE key IN (:a, :b, :c)"),
            {"a": patient_ids.SCHEME_SETTING, "b": patient_ids.KEY_SETTING, "c": patient_ids.CHECK_SETTING},
        )
    engine.dispose()


def counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    with engine.connect() as conn:
        found = {
            name: int(conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one())
            for name in ("study_copy", "resource", "resource_version", "patient_contribution", "audit_event")
        }
        found["patients"] = int(
            conn.execute(text("SELECT count(DISTINCT id) FROM resource_version WHERE rtype = 'Patient'")).scalar_one()
        )
    engine.dispose()
    return found


def read_everything(url: str) -> float:
    """The baseline: read the content of every row a re-key reads, in key order."""
    engine = make_engine(url)
    began = time.perf_counter()
    with engine.connect() as conn:
        for table, order in (
            ("resource", "rtype, id"),
            ("resource_version", "rtype, id, version"),
            ("study_copy", "source, study_uid"),
            ("patient_contribution", "source, study_uid"),
        ):
            for _ in conn.execution_options(yield_per=5000).execute(text(f"SELECT * FROM {table} ORDER BY {order}")):
                pass
    engine.dispose()
    return time.perf_counter() - began


def _rekey_child(url: str, batch: int, peak) -> None:
    engine = make_engine(url)
    key = patient_ids.resolve_key(engine, "bench-rekey-secret-0123456789")
    rekeying.rekey(engine, key, DEFAULT, batch)
    engine.dispose()
    peak.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--sqlite", type=Path, default=None, help="an SQLite file instead of PostgreSQL")
    args = parser.parse_args(argv)
    if args.sqlite:
        args.sqlite.unlink(missing_ok=True)
        url = f"sqlite:///{args.sqlite}"
    else:
        url = fresh_postgres()
    build_old_store(url, args.studies, args.writers)
    found = counts(url)
    print("rows:", ", ".join(f"{k} {v}" for k, v in found.items()))
    baseline = read_everything(url)
    spawn = multiprocessing.get_context("spawn")
    peaks = spawn.Queue()
    child = spawn.Process(target=_rekey_child, args=(url, args.batch, peaks))
    began = time.perf_counter()
    child.start()
    child.join()
    took = time.perf_counter() - began
    if child.exitcode != 0:
        print(f"the re-key failed (exit {child.exitcode})")
        return 1
    peak = peaks.get(timeout=10)
    print(f"re-key of {found['study_copy']} studies, {found['patients']} Patients (batch {args.batch}): {took:.1f} s")
    print(f"  {found['study_copy'] / took:.0f} studies/s, {found['patients'] / took:.0f} Patients/s")
    print(f"  peak memory of the re-keying process: {peak:.0f} MB")
    print(f"  baseline, reading every row it reads: {baseline:.1f} s; re-key/baseline = {took / baseline:.1f}")
    print(f"  at this rate 1,000,000 studies take {1_000_000 / (found['study_copy'] / took) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
