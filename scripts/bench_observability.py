"""Benchmark: what the request log and the metrics cost patient search.

Usage: .venv/bin/python -m scripts.bench_observability [--studies 300] [--workers 1] [--seconds 8] [--rounds 3]

Serves one synced SQLite store with `imaging-facade serve` (gunicorn, as deployed) four ways:
`logging.level: WARNING` and no metrics (no request lines: the baseline), plain lines at INFO,
JSON at INFO, and JSON at INFO with Prometheus metrics (scraped every second meanwhile, as a
busy Prometheus would at most), each writing its log to a file as a log shipper would read it;
drives `ImagingStudy?patient=` with wrk from Debian (`apt-get install wrk`). The four run in
turn, `--rounds` times, so that a noisy machine weighs on each alike; prints the median
requests/s of each and its ratio to the baseline (target: JSON with metrics >= 0.95).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import requests
import yaml

from scripts.bench_api import wrk
from scripts.dataset import generate
from testbed.orthanc import free_port

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "no request log, no metrics"
#: name -> (logging section, metrics on)
VARIANTS = {
    BASELINE: ({"format": "text", "level": "WARNING"}, False),
    "plain lines (INFO)": ({"format": "text", "level": "INFO"}, False),
    "JSON (INFO)": ({"format": "json", "level": "INFO"}, False),
    "JSON (INFO) + metrics": ({"format": "json", "level": "INFO"}, True),
}


class Scraper(threading.Thread):
    """Prometheus scraping the metrics port every second while wrk runs."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.stop, self.scrapes = port, threading.Event(), 0

    def run(self) -> None:
        while not self.stop.wait(1.0):
            if requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).status_code == 200:
                self.scrapes += 1


def serve(config: Path, port: int, log: Path, env: dict) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--config", str(config)], env=env, stdout=out, stderr=out
        )
    for _ in range(300):
        try:
            if requests.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        subprocess.run(["sleep", "0.1"], check=True)
    proc.kill()
    raise SystemExit("server did not answer")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(".bench/folder"))
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    generate(args.data, args.studies, 3, 10)
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    scrapes = 0
    lines: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        configs = {}
        metrics_port = free_port()
        for n, (name, (logging, metrics)) in enumerate(VARIANTS.items()):
            configs[name] = tmp / f"config-{n}.yaml"
            configs[name].write_text(
                yaml.safe_dump(
                    {
                        "store": f"sqlite:///{tmp / 'bench.db'}",
                        "server": {"base_url": f"http://127.0.0.1:{port}/fhir", "port": port, "workers": args.workers},
                        "security": {"open": True, "audit": False},
                        "sources": [{"name": "bench", "type": "folder", "path": str(args.data.resolve())}],
                        "logging": logging,
                        "metrics": {"port": metrics_port} if metrics else {},
                    }
                )
            )
        first = configs[BASELINE]
        subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade", "--config", str(first)], env=env,
                       check=True, capture_output=True)  # fmt: skip
        subprocess.run([sys.executable, "-m", "app.cli", "sync", "--config", str(first)], env=env, check=True,
                       capture_output=True)  # fmt: skip
        patients: list[str] = []
        for _ in range(args.rounds):
            for name, config in configs.items():
                log = tmp / "serve.log"
                proc = serve(config, port, log, env)
                try:
                    if not patients:
                        studies = requests.get(f"http://127.0.0.1:{port}/fhir/ImagingStudy?_count=1000").json()
                        patients = sorted({e["resource"]["subject"]["reference"] for e in studies["entry"]})
                    paths = [f"/fhir/ImagingStudy?patient={p}" for p in patients]
                    scraper = Scraper(metrics_port) if VARIANTS[name][1] else None
                    if scraper:
                        scraper.start()
                    found = wrk(f"http://127.0.0.1:{port}", paths, args.seconds, args.connections, tmp)
                    rates[name].append(found["rps"])
                    if scraper:
                        scraper.stop.set()
                        scraper.join()
                        scrapes = scraper.scrapes
                finally:
                    proc.terminate()
                    proc.wait()
                lines[name] = len(log.read_text().splitlines())
    base = statistics.median(rates[BASELINE])
    print(
        f"data: {args.studies} studies, {len(patients)} patients; gunicorn workers: {args.workers}; "
        f"wrk: {args.connections} connections, {args.seconds}s x {args.rounds} rounds; cpu: {os.cpu_count()}"
    )
    print(f"{'ImagingStudy?patient=':<30} {'req/s (median)':>15} {'ratio':>7} {'log lines (last run)':>21}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<30} {median:>15.0f} {median / base:>7.2f} {lines[name]:>21}")
    print(f"metrics scraped every second while measured ({scrapes} scrapes in the last run)")
    print("target: JSON (INFO) + metrics ratio >= 0.95")
    return 0


if __name__ == "__main__":
    sys.exit(main())
