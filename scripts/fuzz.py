"""Fuzz benchmark: many generated requests against a served instance; none may get a 5xx.

Usage: .venv/bin/python -m scripts.fuzz [--requests 20000] [--studies 60] [--workers 2]
           [--database sqlite|postgresql] [--seed 0]

Syncs a generated folder archive (scripts/dataset.py) into a store, serves it with
`imaging-facade serve` (gunicorn, open mode on loopback), and sends `--requests` requests drawn
from testbed/fuzz.py (the search grammar, headers and bodies, hypothesis strategies) over HTTP.
Reports the answers by status class, every 5xx with the request that caused it, the rate, and
whether the server still serves `/fhir/metadata` at the end. Exits 1 on any 5xx or a server
that stopped serving. PostgreSQL: the database of `FACADE_TEST_POSTGRES` (created and dropped).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import requests
import yaml
from hypothesis import HealthCheck, given, seed, settings

from scripts.dataset import generate
from testbed.fuzz import FuzzRequest, requests_strategy
from testbed.orthanc import free_port
from testbed.postgres import create_database, drop_database

CLI = str(Path(sys.executable).parent / "imaging-facade")


def _serve(config: Path, base: str, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        proc = subprocess.Popen([CLI, "serve", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{base}/metadata", timeout=1).status_code == 200:
                return proc
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start:\n{log.read_text()[-3000:]}")


def fuzz(base: str, count: int, seed_value: int) -> tuple[Counter, list[str], float]:
    """Send `count` generated requests; (statuses by class, the 5xx as text, seconds taken)."""
    origin = base.removesuffix("/fhir")
    classes: Counter = Counter()
    failures: list[str] = []
    session = requests.Session()

    @seed(seed_value)
    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests_strategy())
    def send(req: FuzzRequest) -> None:
        try:
            response = session.request(
                req.method, origin + req.url, headers=req.headers, data=req.body, timeout=90, allow_redirects=False
            )
        except requests.RequestException as exc:  # a closed connection is a failure too
            classes["no answer"] += 1
            failures.append(f"no answer ({type(exc).__name__}): {req.describe()}")
            return
        classes[f"{response.status_code // 100}xx"] += 1
        if response.status_code >= 500:
            failures.append(f"{response.status_code}: {req.describe()}")

    started = time.monotonic()
    send()
    return classes, failures, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--studies", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=Path(".bench/fuzz-folder"))
    args = parser.parse_args(argv)
    generate(args.data, args.studies, 2, 3)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store = f"sqlite:///{folder / 'fuzz.db'}" if args.database == "sqlite" else create_database("facade_fuzz")
        try:
            port = free_port()
            base = f"http://127.0.0.1:{port}/fhir"
            config = folder / "config.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "store": store,
                        "server": {"base_url": base, "host": "127.0.0.1", "port": port, "workers": args.workers},
                        "security": {"open": True},
                        "sources": [{"name": "fuzz", "type": "folder", "path": str(args.data.resolve())}],
                    },
                    sort_keys=False,
                )
            )
            subprocess.run([CLI, "sync", "--config", str(config)], check=True, capture_output=True)
            proc = _serve(config, base, folder / "serve.log")
            try:
                classes, failures, seconds = fuzz(base, args.requests, args.seed)
                serving = requests.get(f"{base}/metadata", timeout=10).status_code == 200
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        finally:
            if args.database == "postgresql":
                drop_database(store)
    sent = sum(classes.values())
    print(f"fuzz: {sent} requests in {seconds:.0f} s ({sent / seconds:.0f}/s), {args.database}, {args.workers} workers")
    print("  answers: " + ", ".join(f"{k} {v}" for k, v in sorted(classes.items())))
    print(f"  5xx or no answer: {len(failures)}; still serving /fhir/metadata: {'yes' if serving else 'NO'}")
    for failure in failures[:20]:
        print("  " + failure)
    return 0 if not failures and serving and sent >= args.requests else 1


if __name__ == "__main__":
    raise SystemExit(main())
