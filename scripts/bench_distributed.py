"""Benchmark: a distributed full sync (backfill) on two Celery workers against one worker of the
same concurrency, over a slow network.

Usage: .venv/bin/python -m scripts.bench_distributed [--size S] [--orthanc-instances N] [--delay 0.02]
                                           [--worker-concurrency 2] [--concurrency 4] [--studies-per-task 10]

The S archive of scripts/dataset.py (300 studies, headers only) is stored into a real Orthanc
behind testbed/proxy.py, which adds `--delay` (20 ms) to every request (a process of its own).
Each run is `imaging-facade sync --distributed` into a new PostgreSQL database, its studies read
and stored by `imaging-facade worker` processes (each `--worker-concurrency` tasks at once, each
task reading `--concurrency` studies at once) taking tasks from a queue of the run's own on the
machine's RabbitMQ (testbed/rabbitmq.py). Target: two workers at least 1.7x one worker, while
the archive is not the limit (the answers-only rate of scripts/bench_backfill.py at twice the
requests in flight says whether it is).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import yaml

from scripts.bench_backfill import DelayProxy
from scripts.dataset import archive, load_orthanc
from testbed.orthanc import OrthancServer
from testbed.postgres import create_database, drop_database
from testbed.rabbitmq import delete_queue, queue_name, require_broker
from testbed.workers import WorkerProcess

CLI = [sys.executable, "-m", "app.cli"]


def _config(work: Path, name: str, store: str, url: str, broker: str, queue: str, args) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "store": store,
                "security": {"open": True},
                "queue": {"broker": broker, "name": queue, "studies_per_task": args.studies_per_task},
                "sources": [
                    {"name": "pacs", "type": "dicomweb", "url": url, "timezone": "UTC", "concurrency": args.concurrency}
                ],
            }
        )
    )
    return path


def distributed_sync(work: Path, url: str, broker: str, workers: int, args) -> dict:
    """One distributed full sync into a new database with `workers` worker processes."""
    name = f"workers-{workers}"
    store, queue = create_database("facade_bench"), queue_name("facade-bench")
    config = _config(work, name, store, url, broker, queue, args)
    try:
        subprocess.run([*CLI, "db", "upgrade", "--config", str(config)], check=True, capture_output=True)
        with ExitStack() as stack:
            procs = [
                stack.enter_context(WorkerProcess(config, work / f"{name}-{i}.log", args.worker_concurrency))
                for i in range(workers)
            ]
            for proc in procs:
                proc.wait_ready()
            start = time.perf_counter()
            run = subprocess.run(
                [*CLI, "sync", "--config", str(config), "--distributed"], capture_output=True, text=True
            )
            seconds = time.perf_counter() - start
        assert run.returncode == 0, run.stderr
        tasks = [proc.count("succeeded") for proc in procs]
    finally:
        delete_queue(queue, broker)
        drop_database(store)
    line = next(line for line in run.stdout.splitlines() if line.startswith("pacs: "))
    studies = int(line.split(" new")[0].split()[-1])
    return {"seconds": seconds, "studies": studies, "tasks": tasks, "summary": line}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="S", help="S (300 studies), M (4,000) or a number of studies")
    parser.add_argument("--orthanc-instances", type=int, default=None, help="at most this many instances per series")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds the proxy adds to every request")
    parser.add_argument("--worker-concurrency", type=int, default=2, help="tasks each worker runs at once")
    parser.add_argument("--concurrency", type=int, default=4, help="studies each task reads at once")
    parser.add_argument("--studies-per-task", type=int, default=10)
    args = parser.parse_args(argv)
    broker = require_broker()
    arch = archive(int(args.size) if args.size.isdigit() else args.size)
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp, OrthancServer() as pacs:
        loaded = load_orthanc(pacs.url, arch, args.orthanc_instances)
        print(
            f"{arch.size} studies, {loaded['instances']} instances stored into Orthanc in "
            f"{loaded['seconds']:.0f} s; {os.cpu_count()} CPUs"
        )
        with DelayProxy(pacs.url, args.delay) as proxy:
            url = proxy.url + "/dicom-web"
            rows = {n: distributed_sync(Path(tmp), url, broker, n, args) for n in (1, 2)}
    print(
        f"\nOrthanc behind a proxy adding {args.delay * 1000:.0f} ms to every request; each worker runs "
        f"{args.worker_concurrency} tasks of {args.studies_per_task} studies at once, each reading "
        f"{args.concurrency} studies at once"
    )
    print(f"{'workers':8} {'studies/s':>10} {'seconds':>8} {'tasks per worker':>17} {'vs 1':>6}")
    base = rows[1]["studies"] / rows[1]["seconds"]
    for n, row in rows.items():
        rate = row["studies"] / row["seconds"]
        tasks = "/".join(map(str, row["tasks"]))
        print(f"{n:<8} {rate:10.1f} {row['seconds']:8.1f} {tasks:>17} {rate / base:5.2f}x")
    print("target: two workers at least 1.7x one worker of the same concurrency")
    return 0


if __name__ == "__main__":
    sys.exit(main())
