"""Type and system history pages at two store sizes: a page must cost the same in a store ten
times larger, since each is read along an index (app/store/history.py), never sorted whole.

    .venv/bin/python -m scripts.bench_history [--versions 200000] [--databases sqlite,postgresql]

Each store holds `versions` versions (60 % ImagingStudy, 30 % Patient, 10 % Endpoint, a third of
the resources with a second and third version) and one patient's compartment of three studies.
It prints the median time of a page of 50 (paging 20 pages deep) for each kind of history, at a
tenth of the size and at the full size, and their ratio: the baseline is the same query in the
smaller store.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from sqlalchemy import text

from app.search.query import Restriction
from app.store.history import HistoryScope, read_page
from app.store.reader import Reader
from app.store.repository import Store
from testbed.postgres import ADMIN_URL, create_database, drop_database

POSTGRES_ADMIN = os.environ.get("FACADE_BENCH_POSTGRES", ADMIN_URL)
START = 1_700_000_000_000_000
TYPES = ("ImagingStudy", "Patient", "Endpoint")
COMPARTMENT = {t: Restriction(("p1",)) for t in TYPES}


def fill(store: Store, versions: int) -> None:
    per_version = max(versions // 3, 1)
    rows = [
        {
            "rtype": "ImagingStudy" if i % 10 < 6 else ("Patient" if i % 10 < 9 else "Endpoint"),
            "id": f"r{i % per_version}",
            "version": i // per_version + 1,
            "last_updated": START + i * 1000,
            "content": b'{"resourceType":"x"}',
        }
        for i in range(versions)
    ]
    studies = [f"r{i}" for i in (5, per_version // 2, per_version - 5) if i % 10 < 6] or ["r0"]
    with store.engine.begin() as conn:
        for at in range(0, len(rows), 10_000):
            conn.execute(
                text(
                    "INSERT INTO resource_version (rtype, id, version, last_updated, content) "
                    "VALUES (:rtype, :id, :version, :last_updated, :content)"
                ),
                rows[at : at + 10_000],
            )
        for rid in studies:
            conn.execute(
                text(
                    "INSERT INTO resource (rtype, id, version, last_updated, content_hash, content) "
                    "VALUES ('ImagingStudy', :rid, 1, 1, 'x', :content)"
                ),
                {"rid": rid, "content": b"{}"},
            )
            conn.execute(
                text(
                    "INSERT INTO idx_reference (rtype, rid, param, target_type, target_id) "
                    "VALUES ('ImagingStudy', :rid, 'patient', 'Patient', 'p1')"
                ),
                {"rid": rid},
            )
    store.analyze()


SCOPES = {
    "type ImagingStudy": HistoryScope(rtype="ImagingStudy"),
    "type Endpoint": HistoryScope(rtype="Endpoint"),
    "system": HistoryScope(types=TYPES),
    "system _since": HistoryScope(types=TYPES, since=START + 1000),
    "type _at": HistoryScope(rtype="ImagingStudy", at=(START, START + 1_000_000)),
    "type, compartment": HistoryScope(rtype="ImagingStudy", restrictions=COMPARTMENT),
    "system, compartment": HistoryScope(types=TYPES, restrictions=COMPARTMENT),
}


def measure(url: str) -> dict[str, float]:
    """Median ms per page of 50, over pages 1 to 20 of each kind of history."""
    reader = Reader(url)
    out = {}
    try:
        for name, scope in SCOPES.items():
            times, cursor = [], None
            for _ in range(20):
                began = time.perf_counter()
                page = read_page(reader, scope, 50, cursor)
                times.append((time.perf_counter() - began) * 1000)
                cursor = page.cursor
                if cursor is None:
                    break
            out[name] = statistics.median(times)
    finally:
        reader.close()
    return out


def run(kind: str, versions: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        url = (
            f"sqlite:///{tmp}/bench.db" if kind == "sqlite" else create_database("facade_bench_history", POSTGRES_ADMIN)
        )
        store = Store(url)
        try:
            fill(store, versions)
            return measure(url)
        finally:
            store.close()
            if kind != "sqlite":
                drop_database(url, POSTGRES_ADMIN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=200_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    for kind in args.databases.split(","):
        small, large = run(kind, args.versions // 10), run(kind, args.versions)
        print(f"{kind}: ms per page of 50, {args.versions // 10:,} versions / {args.versions:,} versions (ratio)")
        for name in SCOPES:
            print(f"  {name:22} {small[name]:7.2f} {large[name]:7.2f}  ({large[name] / small[name]:.2f})")


if __name__ == "__main__":
    main()
