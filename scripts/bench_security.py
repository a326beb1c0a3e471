"""Benchmark: what token checking and audit cost. `ImagingStudy?patient=` in open mode without
audit (the baseline), open mode with audit, and with bearer tokens and audit, same data, same
gunicorn settings, same run; prints each and its ratio to the baseline.

Usage: .venv/bin/python -m scripts.bench_security [--studies 300] [--seconds 3] [--rounds 5] [--connections 16]
                                        [--tokens 20] [--modes open,open+audit,token]
                                        [--database sqlite|postgresql]

Token mode checks signed JWTs (RS384) against a JWKS served from a local HTTP server, as an
authorization server would publish it; `--tokens` distinct tokens are sent in turn (as many
clients would), so each is verified once and then answered from the token cache; every request
is also written to the audit trail, as a server checking tokens always does. Target: token
mode keeps at least 80% of the baseline's throughput. A mode is a set of `security` keys (MODES below).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import requests
import yaml

from scripts.bench_api import Keys, print_rates, start, token_security, wrk
from scripts.bench_search import Databases
from scripts.dataset import generate
from testbed.orthanc import free_port

ROOT = Path(__file__).resolve().parents[1]

#: mode -> (security keys for the config, whether requests carry a token)
MODES = {
    "open": (lambda jwks_uri, issuer: {"open": True, "audit": False}, False),
    "open+audit": (lambda jwks_uri, issuer: {"open": True}, False),
    "token": (token_security, True),  # tokens and audit (a server that checks tokens audits)
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="runs per mode, taking turns; the median is shown")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=20, help="distinct tokens sent in turn")
    parser.add_argument("--modes", default="open,open+audit,token", help=f"comma-separated, from: {', '.join(MODES)}")
    parser.add_argument("--data", type=Path, default=Path(".bench/folder"))
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="the store every mode shares (PostgreSQL: a database created and dropped here)",
    )
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown or "open" not in modes:
        raise SystemExit(f"--modes: known modes are {', '.join(MODES)}, and open (the baseline) must be one")
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    generate(args.data, args.studies, 3, 10)
    keys = Keys()
    tokens = [keys.token(f"client-{i}") for i in range(args.tokens)]
    python = sys.executable
    gunicorn = [python, "-m", "gunicorn", "-w", str(args.workers), "-k", "sync", "--log-level", "warning"]
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    servers = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        databases = Databases(tmp)
        store_url = databases.url(args.database, "security")
        source = [{"name": "bench", "type": "folder", "path": str(args.data.resolve())}]
        targets = {}
        try:
            for mode in modes:
                make_security, sends_token = MODES[mode]
                port = free_port()
                config = tmp / f"{mode}.yaml"
                config.write_text(
                    yaml.safe_dump(
                        {
                            "store": store_url,
                            "server": {"base_url": f"http://127.0.0.1:{port}/fhir"},
                            "security": make_security(keys.jwks_uri, keys.issuer),
                            "sources": source,
                        }
                    )
                )
                env = {**os.environ, "IMAGING_FACADE_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
                if not targets:
                    subprocess.run(
                        [python, "-m", "app.cli", "sync", "--config", str(config)],
                        env=env,
                        check=True,
                        capture_output=True,
                    )
                servers.append(
                    start(
                        gunicorn + ["-b", f"127.0.0.1:{port}", "app.wsgi:application"],
                        env,
                        f"http://127.0.0.1:{port}/fhir/metadata",
                    )
                )
                targets[mode] = (f"http://127.0.0.1:{port}", tokens if sends_token else [])
            open_base = targets["open"][0]
            bundle = requests.get(f"{open_base}/fhir/ImagingStudy?_count=1000", timeout=30).json()
            patients = sorted({e["resource"]["subject"]["reference"] for e in bundle["entry"]})
            paths = [f"/fhir/ImagingStudy?patient={p}" for p in patients]
            for mode, (base, sent) in targets.items():
                headers = {"Authorization": f"Bearer {sent[0]}"} if sent else {}
                check = requests.get(f"{base}{paths[0]}", headers=headers, timeout=30)
                if check.status_code != 200:
                    raise SystemExit(f"{mode}: a search answered {check.status_code}: {check.text[:300]}")
            # modes take turns, so a neighbour's load on a shared machine falls on each alike
            for _ in range(args.rounds):
                for mode, (base, sent) in targets.items():
                    runs[mode].append(wrk(base, paths, args.seconds, args.connections, tmp, tokens=sent))
        finally:
            for server in servers:
                server.terminate()
                server.wait()
            databases.drop_all()
    results = {mode: sorted(rs, key=lambda r: r["rps"])[len(rs) // 2] for mode, rs in runs.items()}
    keys.server.shutdown()
    base = results["open"]["rps"]
    print(
        f"data: {args.studies} studies, {len(patients)} patients, {args.database}; "
        f"ImagingStudy?patient= over every patient; "
        f"gunicorn sync workers: {args.workers}; wrk: {args.connections} connections, "
        f"median of {args.rounds} turns of {args.seconds}s; "
        f"{args.tokens} distinct RS384 tokens; cpu: {os.cpu_count()}"
    )
    print_rates("mode", results, base, 12)
    print("target: ratio >= 0.80 for token (token checking and audit together)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
