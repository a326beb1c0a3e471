"""Benchmark: a full sync (backfill) reading several studies at once, against reading one at a time
and against Orthanc answering the same requests with nothing else to do.

Usage: .venv/bin/python -m scripts.bench_backfill [--size S] [--orthanc-instances N] [--delay 0.02]
                                        [--concurrency 1,4,8]

The S archive of scripts/dataset.py (300 studies, 43,985 instances, headers only) is stored into
a real Orthanc; every sync below is a full sync into a new SQLite store.

1. Slow network. Orthanc behind a proxy that adds `--delay` (20 ms) to every request
   (testbed/proxy.py, in a process of its own): studies/s and instances/s at each concurrency,
   and the ratio to concurrency 1. Target: at least 5x at concurrency 8. Next to it, the rate
   at which the same requests are answered through the proxy to as many clients that only read
   the answers: where that is no higher, the archive, not the sync, is the limit.
2. Local Orthanc. The sync's rate at each concurrency, against the rate at which that Orthanc
   answers the same requests (the listing, then each study's series and instances queries,
   recorded from a sync) to as many concurrent clients that only read the answers: no
   decoding, mapping or storing. Target: at least 0.8x (the archive is the limit).
"""

from __future__ import annotations

import argparse
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import yaml

from app.config import load_config
from app.sources.dicomweb import DicomwebSource
from app.store.repository import Store
from app.sync import sync_source
from scripts.dataset import archive, load_orthanc
from testbed.orthanc import OrthancServer


def _sync(work: Path, url: str, concurrency: int) -> dict:
    """One full sync into a new store: seconds, studies and instances."""
    name = f"sync-{len(list(work.glob('sync-*.yaml')))}"
    path = work / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "store": f"sqlite:///{work / name}.db",
                "security": {"open": True},
                "sources": [
                    {"name": "pacs", "type": "dicomweb", "url": url, "timezone": "UTC", "concurrency": concurrency}
                ],
            }
        )
    )
    config = load_config(path)
    store = Store.from_config(config)
    try:
        start = time.perf_counter()
        summary = sync_source(store, config.sources[0])
        seconds = time.perf_counter() - start
    finally:
        store.close()
    assert summary.error is None and summary.failed == 0, summary
    return {"seconds": seconds, "studies": summary.done, "instances": summary.source_stats["instances"]}


def _rate(run: dict) -> float:
    return run["studies"] / run["seconds"]


# -- the same requests, answers only --------------------------------------------------------
def recorded_requests(url: str) -> tuple[list[str], list[list[str]]]:
    """The URLs a sequential sync asks: the listing's, and each study's in the order asked."""
    source = DicomwebSource("pacs", url)
    urls: list[str] = []
    source.session.hooks["response"].append(lambda response, *a, **k: urls.append(response.request.url))
    source.total()
    listing, studies = list(urls), []
    for _record in source.iter_studies():  # one study read, then given back
        studies.append(urls[len(listing) + sum(map(len, studies)) :])
    return listing, studies


def answer_only(listing: list[str], studies: list[list[str]], clients: int) -> dict:
    """The same requests from `clients` threads that only read the answers: seconds, studies."""
    accept = {"Accept": "application/dicom+json"}
    local = threading.local()
    sessions: queue.SimpleQueue[requests.Session] = queue.SimpleQueue()

    def get(url: str) -> int:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            sessions.put(session)
        response = session.get(url, headers=accept, timeout=60)
        response.raise_for_status()
        return len(response.content)  # the whole answer is read, as a sync reads it

    def study(urls: list[str]) -> None:
        for url in urls:
            get(url)

    start = time.perf_counter()
    for url in listing:
        get(url)
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(study, studies))
    seconds = time.perf_counter() - start
    while not sessions.empty():
        sessions.get().close()
    return {"seconds": seconds, "studies": len(studies)}


# -- 1. slow network ------------------------------------------------------------------------
class DelayProxy:
    """testbed/proxy.py in a child process, so it takes no time from the sync's interpreter."""

    def __init__(self, target: str, delay: float):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "testbed.proxy", target, "--delay", str(delay)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def slow_network(args, pacs: OrthancServer, work: Path, asked: tuple[list[str], list[list[str]]]) -> None:
    listing, studies = asked
    rows = {}
    with DelayProxy(pacs.url, args.delay) as proxy:
        via = (
            [u.replace(pacs.url, proxy.url, 1) for u in listing],
            [[u.replace(pacs.url, proxy.url, 1) for u in urls] for urls in studies],
        )
        for n in args.concurrency:
            rows[n] = (_sync(work, proxy.url + "/dicom-web", n), answer_only(*via, n))
    base = _rate(rows[args.concurrency[0]][0])
    print(f"\n1. slow network: Orthanc behind a proxy adding {args.delay * 1000:.0f} ms to every request")
    print(
        f"{'concurrency':12} {'studies/s':>10} {'instances/s':>12} {'seconds':>8} "
        f"{'vs ' + str(args.concurrency[0]):>7} {'answers only':>13} {'sync/answers':>13}"
    )
    for n, (synced, bare) in rows.items():
        rate = _rate(synced)
        print(
            f"{n:<12} {rate:10.1f} {synced['instances'] / synced['seconds']:12.0f} {synced['seconds']:8.1f} "
            f"{rate / base:6.2f}x {_rate(bare):13.1f} {rate / _rate(bare):12.2f}x"
        )
    print(f"target: concurrency 8 at least 5x concurrency {args.concurrency[0]}")
    print("(answers only: the same requests through the proxy from as many clients that only read the answers)")


# -- 2. local Orthanc -----------------------------------------------------------------------
def local_orthanc(args, pacs: OrthancServer, work: Path, asked: tuple[list[str], list[list[str]]]) -> None:
    listing, studies = asked
    print("\n2. local Orthanc: the sync against Orthanc answering the same requests")
    print(f"{'concurrency':12} {'studies/s':>10} {'instances/s':>12} {'answers only':>13} {'sync/answers':>13}")
    for n in args.concurrency:
        bare = answer_only(listing, studies, n)
        synced = _sync(work, pacs.dicomweb_url, n)
        rate = _rate(synced)
        print(
            f"{n:<12} {rate:10.1f} {synced['instances'] / synced['seconds']:12.0f} {_rate(bare):13.1f} "
            f"{rate / _rate(bare):12.2f}x"
        )
    print("target: the sync at least 0.8x the answers-only rate at each concurrency")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="S", help="S (300 studies), M (4,000) or a number of studies")
    parser.add_argument("--orthanc-instances", type=int, default=None, help="at most this many instances per series")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds the proxy adds to every request")
    parser.add_argument("--concurrency", default="1,4,8", help="the concurrency values to compare, first the base")
    args = parser.parse_args(argv)
    args.concurrency = [int(n) for n in args.concurrency.split(",")]
    arch = archive(int(args.size) if args.size.isascii() and args.size.isdigit() else args.size)
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp, OrthancServer() as pacs:
        loaded = load_orthanc(pacs.url, arch, args.orthanc_instances)
        print(
            f"{arch.size} studies, {loaded['instances']} instances stored into Orthanc in "
            f"{loaded['seconds']:.0f} s; {os.cpu_count()} CPUs"
        )
        asked = recorded_requests(pacs.dicomweb_url)
        print(f"a sync asks {len(asked[0])} listing requests, then {sum(map(len, asked[1]))} for the studies")
        slow_network(args, pacs, Path(tmp), asked)
        local_orthanc(args, pacs, Path(tmp), asked)
    return 0


if __name__ == "__main__":
    sys.exit(main())
