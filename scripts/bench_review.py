"""How long a page of the review queue takes when the store holds many scored pairs.

Fills a store (SQLite, then PostgreSQL) with N pairs in `patient_link` (bulk-inserted; a
quarter in the review queue, the rest linked; few distinct scores, so most pairs tie on
points and the pair's ids order them), then walks every page of 1,000 pairs of
`identity list --status all` and of the review queue through app.identity.review.page_pairs
(the function the CLI and the admin API call), following the cursors from the first page.
Prints per listing the pairs met (each exactly once, or it says so), the total, and the time
of the first, median, last and slowest page, against a baseline measured in the same run: the
read of one pair by its primary key.

    .venv/bin/python -m scripts.bench_review [--pairs 300000] [--databases sqlite,postgresql]

Target: a page deep in the listing costs what the first does (last/first at most 2).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

from app.identity.review import page_pairs
from app.store import links
from app.store import tables as t
from app.store.engine import bulk_insert
from app.store.repository import Store
from testbed.postgres import ADMIN_URL, create_database, drop_database

POSTGRES_ADMIN = os.environ.get("FACADE_BENCH_POSTGRES", ADMIN_URL)
PAGE = 1000


def pairs(count: int, rng: random.Random) -> list[dict]:
    rows, seen = [], set()
    while len(rows) < count:
        a, b = f"p{rng.randrange(10**7):08d}", f"p{rng.randrange(10**7):08d}"
        if a >= b or (a, b) in seen:
            continue
        seen.add((a, b))
        status = rng.choice(["review", "linked", "linked", "linked"])
        points = float(rng.choice([9, 11.5, 14, 16, 21, 30]))
        rows.append({"a": a, "b": b, "status": status, "points": points, "explanation": b"{}", "decided": 1})
    return rows


def walk(store: Store, status: str | None) -> tuple[int, int, list[float], bool]:
    """(pairs met, total, seconds per page, every pair met once)."""
    cursor, times, met = None, [], []
    total = 0
    while True:
        began = time.perf_counter()
        page = page_pairs(store, status, None, PAGE, cursor)
        times.append(time.perf_counter() - began)
        total = page["total"]
        met += [tuple(p["patients"]) for p in page["pairs"]]
        cursor = page["next"]
        if cursor is None:
            return len(met), total, times, len(met) == len(set(met)) == total


def baseline(store: Store, rows: list[dict], rng: random.Random) -> float:
    times = []
    with store.engine.connect() as conn:
        for row in rng.sample(rows, 200):
            began = time.perf_counter()
            links.get_link(conn, row["a"], row["b"])
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=300_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    rows = pairs(args.pairs, random.Random(18))
    print(f"{args.pairs:,} scored pairs, pages of {PAGE}")
    for kind in args.databases.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            url = (
                f"sqlite:///{tmp}/bench.db"
                if kind == "sqlite"
                else create_database("facade_bench_review", POSTGRES_ADMIN)
            )
            store = Store(url)
            try:
                with store.engine.begin() as conn:
                    for start in range(0, len(rows), 20_000):
                        bulk_insert(conn, t.PatientLink, rows[start : start + 20_000])
                store.analyze()
                keyed = baseline(store, rows, random.Random(1))
                print(f"{kind}: baseline keyed read of one pair p50 {1000 * keyed:.2f} ms")
                for status in (None, "review"):
                    met, total, times, once = walk(store, status)
                    p50 = statistics.median(times)
                    print(
                        f"  {status or 'all':6s} {met:,} pairs of {total:,} in {len(times)} pages"
                        f"{'' if once else ' (NOT each once)'}: first {1000 * times[0]:.0f} ms,"
                        f" p50 {1000 * p50:.0f} ms ({p50 / keyed:.0f}x baseline), last {1000 * times[-1]:.0f} ms,"
                        f" slowest {1000 * max(times):.0f} ms; last/first {times[-1] / times[0]:.2f}"
                    )
            finally:
                store.close()
                if kind != "sqlite":
                    drop_database(url, POSTGRES_ADMIN)


if __name__ == "__main__":
    main()
