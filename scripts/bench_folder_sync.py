"""Benchmark: folder sync rate against plain pydicom header parsing of the same files.

Usage: .venv/bin/python -m scripts.bench_folder_sync [--studies 300] [--series 3] [--instances 10] [--rounds 3]

Both runs read the same generated files from the page cache, in alternating rounds; the
figure to compare is the ratio (sync files/s ÷ raw dcmread files/s), measured in the same
run because these machines are noisy. The target is at least 0.5.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom

from app.sources.folder_settings import FolderSettings
from app.sources.settings import SourceSettings
from app.store.repository import Store
from app.sync import sync_source
from scripts.dataset import generate


def raw_parse(files: list[Path]) -> float:
    start = time.perf_counter()
    for f in files:
        pydicom.dcmread(f, stop_before_pixels=True)
    return len(files) / (time.perf_counter() - start)


def folder_sync(root: Path, files: int, workdir: Path, n: int) -> tuple[float, dict]:
    db = workdir / f"bench-{n}.db"
    store = Store(f"sqlite:///{db}")
    src = SourceSettings(
        name="bench", type="folder", timezone="UTC", patient_id_system="urn:bench", protocol=FolderSettings(path=root)
    )
    start = time.perf_counter()
    summary = sync_source(store, src)
    rate = files / (time.perf_counter() - start)
    store.close()
    return rate, summary.as_dict()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--series", type=int, default=3)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(".bench/folder"))
    args = parser.parse_args(argv)
    count = generate(args.data, args.studies, args.series, args.instances)
    files = sorted(p for p in args.data.rglob("*.dcm"))
    assert len(files) == count, (len(files), count)
    raw_parse(files)  # warm the page cache
    raw_rates, sync_rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            raw_rates.append(raw_parse(files))
            rate, summary = folder_sync(args.data, count, Path(tmp), n)
            sync_rates.append(rate)
            assert summary["new"] == args.studies and summary["failed"] == 0, summary
    raw, synced = statistics.median(raw_rates), statistics.median(sync_rates)
    print(
        f"files: {count} ({args.studies} studies x {args.series} series x {args.instances} instances), "
        f"rounds: {args.rounds}, cpu: {os.cpu_count()}"
    )
    print(
        f"raw pydicom.dcmread(stop_before_pixels=True): {raw:8.0f} files/s  (rounds: "
        + ", ".join(f"{r:.0f}" for r in raw_rates)
        + ")"
    )
    print(
        f"imaging-facade folder sync (into SQLite):     {synced:8.0f} files/s  (rounds: "
        + ", ".join(f"{r:.0f}" for r in sync_rates)
        + ")"
    )
    print(f"ratio sync/raw: {synced / raw:.2f}  (target >= 0.50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
