"""How long matching one new patient takes against 100,000 stored patients.

Fills a store (SQLite, then PostgreSQL) with N generated patients as sync leaves them for
identity: the Patient resource, its study's contribution, its match features and blocking
keys (bulk-inserted: filing them one sync at a time would take the run's whole budget).
Family names follow a long-tailed distribution so that common names make big blocks. Then,
per database, for a few hundred new patients (half of them another archive's record of a
stored patient, with a typo, a swap, a missing or garbled birth date; half new people):

- `match`: features, blocking, candidate fetch and scoring (what `Patient/$match` runs);
- `reconcile`: the whole identity step of a sync after the new Patient is stored (filing its
  keys, scoring, deciding, and new Patient versions with Patient.link where it links);
- baseline: a plain keyed lookup of one patient's features by primary key, the cheapest
  query the store answers, measured in the same run.

    .venv/bin/python -m scripts.bench_identity [--patients 100000] [--queries 300] [--databases sqlite,postgresql]

Target: match p50 under 20 ms at 100,000 patients.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import orjson
from sqlalchemy import select, text

from app.identity.features import blocking_keys, features
from app.identity.keys import patient_id
from app.identity.match import match
from app.identity.reconcile import digest, reconcile_patient
from app.identity.settings import DEFAULT
from app.store import tables as t
from app.store.engine import bulk_insert
from app.store.repository import Store
from app.store.resources import content_hash
from scripts.dataset import BENCH_KEY
from testbed.identity_corpus import FEMALE, MALE, typo
from testbed.postgres import ADMIN_URL, create_database, drop_database

ROOT = Path(__file__).resolve().parents[1]

POSTGRES_ADMIN = os.environ.get("FACADE_BENCH_POSTGRES", ADMIN_URL)
SYLLABLES = [
    "ber",
    "man",
    "son",
    "ka",
    "li",
    "ro",
    "sch",
    "mit",
    "wal",
    "ter",
    "ko",
    "nen",
    "gar",
    "ci",
    "a",
    "ver",
    "hof",
    "stein",
    "berg",
    "ski",
    "ova",
    "ez",
    "el",
    "ha",
    "mu",
    "ri",
    "do",
    "le",
    "ne",
    "to",
]


def family_names(rng: random.Random, count: int = 4000) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        names.add("".join(rng.choice(SYLLABLES) for _ in range(rng.choice([2, 2, 3]))).capitalize())
    return sorted(names)


def make_patient(rng: random.Random, families: list[str], weights: list[float], n: int, source: str) -> dict:
    sex = rng.choice("MF")
    birth = date(1925, 1, 1) + timedelta(days=rng.randrange(365 * 95))
    system = f"urn:oid:1.2.826.0.1.3680043.10.{source}"
    value = f"{n:08d}"
    return {
        "resourceType": "Patient",
        "id": patient_id(system, value, BENCH_KEY),
        "identifier": [{"system": system, "value": value}],
        "name": [{"family": rng.choices(families, weights)[0], "given": [rng.choice(MALE if sex == "M" else FEMALE)]}],
        "gender": "male" if sex == "M" else "female",
        "birthDate": birth.isoformat(),
    }


def variant(rng: random.Random, patient: dict, n: int) -> dict:
    """Another archive's record of the same person, with one error now and then."""
    other = orjson.loads(orjson.dumps(patient))
    system, value = "urn:oid:1.2.826.0.1.3680043.10.99", f"X{n:07d}"
    other["id"], other["identifier"] = patient_id(system, value, BENCH_KEY), [{"system": system, "value": value}]
    name = other["name"][0]
    roll = rng.random()
    if roll < 0.2:
        name["family"] = typo(name["family"], rng)
    elif roll < 0.3:
        name["family"], name["given"] = name["given"][0], [name["family"]]
    elif roll < 0.4:
        del other["birthDate"]
    elif roll < 0.5:
        year, month, day = other["birthDate"].split("-")
        if int(day) <= 12:
            other["birthDate"] = f"{year}-{day}-{month}"
    return other


def fill(store: Store, patients: list[dict]) -> None:
    """File patients as sync and the identity step would, in bulk."""
    micros = int(time.time() * 1_000_000)
    batch = 5000
    for start in range(0, len(patients), batch):
        chunk = patients[start : start + batch]
        resources, contributions, matches, blocks = [], [], [], []
        for p in chunk:
            content = orjson.dumps(p)
            resources.append(
                {
                    "rtype": "Patient",
                    "id": p["id"],
                    "version": 1,
                    "last_updated": micros,
                    "content_hash": content_hash(p),
                    "content": content,
                }
            )
            contributions.append(
                {
                    "source": "bench",
                    "study_uid": "2.25." + p["id"][1:20],
                    "patient_id": p["id"],
                    "rank": "|",
                    "content": orjson.dumps(p, option=orjson.OPT_SORT_KEYS),
                }
            )
            feats = features(p, DEFAULT)
            matches.append({"patient_id": p["id"], "digest": digest(feats), "features": orjson.dumps(feats)})
            blocks += [{"key": k, "patient_id": p["id"]} for k in blocking_keys(feats)]
        with store.engine.begin() as conn:
            for table, rows in (
                (t.Resource, resources),
                (t.PatientContribution, contributions),
                (t.PatientMatch, matches),
                (t.PatientBlock, blocks),
            ):
                bulk_insert(conn, table, rows)
    store.analyze()
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE patient_block, patient_match, patient_link")


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95) - 1] * 1000


def bench(store: Store, existing: list[dict], queries: int, rng: random.Random) -> dict:
    news = []
    for n in range(queries):
        if n % 2 == 0:
            news.append(variant(rng, rng.choice(existing), n))
        else:
            news.append(make_patient(rng, FAMILIES, WEIGHTS, 90_000_000 + n, "98"))
    baseline, matching, candidates = [], [], []
    ids = [p["id"] for p in rng.sample(existing, queries)]
    with store.engine.connect() as conn:
        for pid in ids:
            began = time.perf_counter()
            conn.execute(select(t.PatientMatch.features).where(t.PatientMatch.patient_id == pid)).scalar()
            baseline.append(time.perf_counter() - began)
        for p in news:
            began = time.perf_counter()
            found = match(conn, p, DEFAULT)
            matching.append(time.perf_counter() - began)
            candidates.append(len(found))
    reconcile, linked = [], 0
    for p in news:
        uid = f"2.25.{uuid.uuid4().int}"
        study = {
            "resourceType": "ImagingStudy",
            "id": uid,
            "status": "available",
            "subject": {"reference": f"Patient/{p['id']}"},
        }
        store.studies.put(study, p, "new")  # what sync stores first (not timed)
        began = time.perf_counter()
        changed = reconcile_patient(store, p["id"], DEFAULT)
        reconcile.append(time.perf_counter() - began)
        linked += bool(changed)
    with store.engine.connect() as conn:
        block_sizes = [
            r[0] for r in conn.execute(text("SELECT COUNT(*) FROM patient_block GROUP BY key ORDER BY 1 DESC LIMIT 1"))
        ]
    return {
        "baseline": percentiles(baseline),
        "match": percentiles(matching),
        "reconcile": percentiles(reconcile),
        "matches per query": statistics.mean(candidates),
        "linked": linked,
        "largest block": block_sizes[0],
    }


FAMILIES: list[str] = []
WEIGHTS: list[float] = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    FAMILIES[:] = family_names(rng)
    WEIGHTS[:] = [1 / (rank + 10) for rank in range(len(FAMILIES))]  # long-tailed: a few very common
    existing = [make_patient(rng, FAMILIES, WEIGHTS, n, "1") for n in range(args.patients)]
    print(
        f"{args.patients:,} stored patients, {args.queries} new ones matched against them "
        f"(half another archive's record of a stored patient)"
    )
    for kind in args.databases.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            url = (
                f"sqlite:///{tmp}/bench.db"
                if kind == "sqlite"
                else create_database("facade_bench_identity", POSTGRES_ADMIN)
            )
            store = Store(url)
            try:
                began = time.perf_counter()
                fill(store, existing)
                filled = time.perf_counter() - began
                result = bench(store, existing, args.queries, random.Random(args.seed + 1))
            finally:
                store.close()
                if kind != "sqlite":
                    drop_database(url, POSTGRES_ADMIN)
        base50, base95 = result["baseline"]
        m50, m95 = result["match"]
        r50, r95 = result["reconcile"]
        print(f"\n{kind} (filled in {filled:.0f} s; largest block {result['largest block']} patients)")
        print(f"  baseline keyed lookup  p50 {base50:6.2f} ms  p95 {base95:6.2f} ms")
        print(
            f"  match                  p50 {m50:6.2f} ms  p95 {m95:6.2f} ms  ({m50 / base50:.0f}x baseline; "
            f"target p50 < 20 ms: {'met' if m50 < 20 else 'MISSED'}); "
            f"{result['matches per query']:.2f} matches returned per query"
        )
        print(
            f"  reconcile (sync step)  p50 {r50:6.2f} ms  p95 {r95:6.2f} ms  "
            f"({result['linked']} of {args.queries} new patients linked)"
        )


if __name__ == "__main__":
    main()
