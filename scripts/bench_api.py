"""Benchmark: FHIR read and patient search against a bare Flask endpoint, all under the same gunicorn settings.

Usage: .venv/bin/python -m scripts.bench_api [--database postgresql|sqlite] [--studies 4000] [--workers 1]
                                   [--seconds 5] [--rounds 3] [--connections 16] [--tokens 20]

Loads `--studies` studies of the search data set (scripts/dataset.py: patients with several
studies of several series, through the real mapping and the sync's store write) into a store:
a PostgreSQL database created and dropped here (the test suite's server), or an SQLite file.
Then serves, each with the same gunicorn settings:

- a bare Flask app answering "hello" (the ceiling of the WSGI server on this machine);
- the facade in open mode with audit on (every request writes its AuditEvent);
- the facade checking RS384 JWT access tokens against a JWKS served on loopback, with audit
  (`--tokens` distinct tokens sent in turn, as from many clients).

wrk from Debian (`apt-get install wrk`) drives each in turn over real ids, `--rounds` times, so
a neighbour's load on a shared machine falls on each alike. Prints the median requests/s, p50
and p99 of each, the median of its ratio to the bare endpoint measured in the same round, and
the lowest and highest of those ratios. Target: ratio >= 0.5 for every FHIR row.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import requests
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from scripts.dataset import ZONE, archive, load_store
from testbed.orthanc import free_port
from testbed.postgres import create_database, drop_database

ROOT = Path(__file__).resolve().parents[1]

BARE_APP = """
from flask import Flask

app = Flask("bare")

@app.get("/hello")
def hello():
    return "hello"
"""

AUDIENCE = "https://imaging.example.org/fhir"
SCOPE = "system/ImagingStudy.rs system/Patient.rs system/Endpoint.rs"


def token_security(jwks_uri: str, issuer: str) -> dict:
    """`security` of a server checking the tokens `Keys` signs (and auditing, as such a server does)."""
    return {
        "open": False,
        "issuer": issuer,
        "audience": AUDIENCE,
        "jwks_uri": jwks_uri,
        "token_endpoint": f"{issuer}/token",
    }


class Keys:
    """An RSA signing key and a loopback HTTP server publishing its JWKS."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        public.update({"kid": "bench-1", "alg": "RS384", "use": "sig"})
        body = json.dumps({"keys": [public]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.jwks_uri = f"{self.issuer}/jwks"

    def token(self, client: str) -> str:
        now = int(time.time())
        return jwt.encode(
            {
                "iss": self.issuer,
                "aud": AUDIENCE,
                "sub": client,
                "client_id": client,
                "scope": SCOPE,
                "iat": now,
                "exp": now + 3600,
                "jti": uuid.uuid4().hex,
            },
            self.key,
            algorithm="RS384",
            headers={"kid": "bench-1", "typ": "at+jwt"},  # an RFC 9068 access token
        )


def start(cmd: list[str], env: dict, url: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(200):
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return proc
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server did not answer at {url}")


def wrk(base: str, paths: list[str], seconds: int, connections: int, workdir: Path, tokens=()) -> dict:
    """wrk sending GETs of `paths` at random (each with a bearer token of `tokens`, in turn, when given)."""
    script = workdir / "requests.lua"
    lua_paths = ",".join(json.dumps(p) for p in paths)
    lua_tokens = ",".join(json.dumps(t) for t in tokens)
    # requests are formatted once, when wrk starts, so the client spends no more per request
    # with a token than without: on two shared cores its work would come out of the server's
    script.write_text(
        f"local paths = {{{lua_paths}}}\nlocal tokens = {{{lua_tokens}}}\nlocal formatted = {{}}\n"
        "math.randomseed(7)\n"
        "init = function(args)\n"
        "  for i = 1, math.max(#paths, #tokens) * 4 do\n"
        "    local headers = {}\n"
        "    if #tokens > 0 then headers['Authorization'] = 'Bearer ' .. tokens[(i % #tokens) + 1] end\n"
        "    formatted[i] = wrk.format('GET', paths[math.random(#paths)], headers)\n"
        "  end\n"
        "end\n"
        "request = function() return formatted[math.random(#formatted)] end\n"
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": lat.get("50"), "p99": lat.get("99"), "errors": int(non2xx.group(1)) if non2xx else 0}


def print_rates(label: str, results: dict, base: float, width: int) -> None:
    """One row per wrk result: req/s, p50, p99, its ratio to `base` req/s, and non-2xx answers."""
    print(f"{label:{width}} {'req/s':>9} {'p50':>9} {'p99':>9} {'ratio':>6} {'non-2xx':>8}")
    for name, r in results.items():
        print(f"{name:{width}} {r['rps']:9.0f} {r['p50']:>9} {r['p99']:>9} {r['rps'] / base:6.2f} {r['errors']:8d}")


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used (0 when it is gone, or not on this host)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU time used while one endpoint is driven: by its gunicorn worker, and by the store's
    PostgreSQL sessions (the only active ones then; read off /proc when PostgreSQL runs here).
    It tells what a request costs when the figures of throughput are blurred by other work on
    a shared machine, which slows a request that waits on PostgreSQL more than one that does not."""

    def __init__(self, store_url: str, servers: dict[str, subprocess.Popen]):
        from app.store.reader import Reader

        self._reader = Reader(store_url) if not store_url.startswith("sqlite:") else None
        self._servers = servers

    def _sessions(self) -> list[int]:
        if self._reader is None:
            return []
        rows = self._reader.all(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [r[0] for r in rows]

    def _workers(self, base: str) -> list[int]:
        master = self._servers[base].pid
        return [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]

    def start(self, base: str) -> dict:
        workers = {pid: _cpu_seconds(pid) for pid in self._workers(base)}
        return {"workers": workers, "sessions": {pid: _cpu_seconds(pid) for pid in self._sessions()}}

    def stop(self, base: str, started: dict) -> tuple[float, float]:
        """(worker seconds, PostgreSQL seconds) since `start`."""
        worker = sum(_cpu_seconds(pid) - before for pid, before in started["workers"].items())
        sessions = self._sessions()
        database = sum(_cpu_seconds(pid) - started["sessions"].get(pid, 0.0) for pid in sessions)
        return worker, database

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


def _load(url: str, studies: int, max_instances: int | None) -> None:
    """The search data set into `url`, as a sync writes it, with the planner's statistics fresh."""
    from app.store.repository import Store

    store = Store(url, ZONE, None)
    try:
        load_store(store, archive(studies), max_instances)
        if not url.startswith("sqlite:"):
            with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")  # what autovacuum does soon after a bulk load
    finally:
        store.close()


def _ids(url: str) -> tuple[list[str], list[str], float]:
    """Every stored study, every patient with a study, and the mean size of a study's JSON in KB."""
    from app.store.reader import Reader

    reader = Reader(url)
    try:
        studies = [r[0] for r in reader.all("SELECT id FROM resource WHERE rtype = ? ORDER BY id", ["ImagingStudy"])]
        patients = [
            r[0]
            for r in reader.all(
                "SELECT DISTINCT target_id FROM idx_reference WHERE rtype = ? AND param = ? ORDER BY target_id",
                ["ImagingStudy", "patient"],
            )
        ]
        size = reader.one("SELECT AVG(LENGTH(content)) FROM resource WHERE rtype = ?", ["ImagingStudy"])
    finally:
        reader.close()
    return studies, patients, float(size[0] if size else 0) / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--studies", type=int, default=4000, help="studies of the search data set (scripts/dataset.py)")
    parser.add_argument(
        "--max-instances", type=int, default=None, help="at most this many instances per series (default: all)"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="turns over every endpoint; medians are shown")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=20, help="distinct tokens sent in turn")
    parser.add_argument("--store", help="a store already holding the data set (neither loaded nor dropped here)")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    python = sys.executable
    gunicorn = [python, "-m", "gunicorn", "-w", str(args.workers), "-k", "sync", "--log-level", "warning"]
    keys = Keys()
    tokens = [keys.token(f"client-{i}") for i in range(args.tokens)]
    servers: list[subprocess.Popen] = []
    by_base: dict[str, subprocess.Popen] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.store:
            store_url = args.store
        else:
            store_url = f"sqlite:///{tmp / 'bench.db'}" if args.database == "sqlite" else create_database("bench_api")
        loaded = None
        try:
            if not args.store:
                started = time.perf_counter()
                _load(store_url, args.studies, args.max_instances)
                loaded = time.perf_counter() - started
            study_ids, patients, mean_kb = _ids(store_url)
            random.Random(7).shuffle(study_ids)
            (tmp / "bare_app.py").write_text(BARE_APP)
            bare_port = free_port()
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            servers.append(
                start(
                    gunicorn + ["-b", f"127.0.0.1:{bare_port}", "--chdir", str(tmp), "bare_app:app"],
                    env,
                    f"http://127.0.0.1:{bare_port}/hello",
                )
            )
            by_base[f"http://127.0.0.1:{bare_port}"] = servers[-1]
            facades = {}
            for label, security in (
                ("audit", {"open": True}),
                ("tokens", token_security(keys.jwks_uri, keys.issuer)),
            ):
                port = free_port()
                config = tmp / f"{label}.yaml"
                config.write_text(
                    yaml.safe_dump(
                        {
                            "store": store_url,
                            "timezone": ZONE,
                            "server": {"base_url": f"http://127.0.0.1:{port}/fhir"},
                            "security": {**security, "audit_spool": str(tmp / f"spool-{label}")},
                            "sources": [],
                        }
                    )
                )
                servers.append(
                    start(
                        gunicorn + ["-b", f"127.0.0.1:{port}", "app.wsgi:application"],
                        {**env, "IMAGING_FACADE_CONFIG": str(config)},
                        f"http://127.0.0.1:{port}/fhir/metadata",
                    )
                )
                facades[label] = f"http://127.0.0.1:{port}"
                by_base[facades[label]] = servers[-1]
            search_paths = [f"/fhir/ImagingStudy?patient=Patient/{p}" for p in patients]
            rows = {
                "bare Flask /hello": (f"http://127.0.0.1:{bare_port}", ["/hello"], []),
                "GET ImagingStudy/{id}, audit": (facades["audit"], [f"/fhir/ImagingStudy/{i}" for i in study_ids], []),
                "ImagingStudy?patient=, audit": (facades["audit"], search_paths, []),
                "ImagingStudy?patient=, tokens+audit": (facades["tokens"], search_paths, tokens),
            }
            for name, (base, paths, sent) in rows.items():
                headers = {"Authorization": f"Bearer {sent[0]}"} if sent else {}
                check = requests.get(f"{base}{paths[0]}", headers=headers, timeout=30)
                if check.status_code != 200:
                    raise SystemExit(f"{name}: answered {check.status_code}: {check.text[:300]}")
            meter = CpuMeter(store_url, by_base)
            runs: dict[str, list[dict]] = {name: [] for name in rows}
            try:
                for _ in range(args.rounds):
                    for name, (base, paths, sent) in rows.items():
                        started = meter.start(base)
                        run = wrk(base, paths, args.seconds, args.connections, tmp, tokens=sent)
                        worker, database = meter.stop(base, started)
                        served = max(run["rps"] * args.seconds, 1.0)
                        runs[name].append(
                            {**run, "worker_ms": worker * 1000 / served, "pg_ms": database * 1000 / served}
                        )
                    bare = runs["bare Flask /hello"][-1]
                    for name in rows:
                        run = runs[name][-1]
                        run["ratio"] = run["rps"] / bare["rps"]
                        run["cpu_ratio"] = bare["worker_ms"] / (run["worker_ms"] + run["pg_ms"])
            finally:
                meter.close()
        finally:
            for server in servers:
                server.terminate()
                server.wait()
            keys.server.shutdown()
            if args.database == "postgresql" and not args.store:
                drop_database(store_url)
    origin = f"loaded in {loaded:.0f} s" if loaded is not None else "the store given"
    print(
        f"data: {len(study_ids)} studies of the search data set ({mean_kb:.0f} KB of JSON a study on average), "
        f"{len(patients)} patients, {store_url.split(':', 1)[0].split('+')[0]} ({origin}); "
        f"gunicorn sync workers: {args.workers}; wrk: {args.connections} connections, "
        f"{args.rounds} rounds of {args.seconds}s each; {args.tokens} distinct RS384 tokens; cpu: {os.cpu_count()}"
    )
    print(
        f"{'endpoint':36} {'req/s':>7} {'p50':>9} {'p99':>9} {'ratio':>6} {'range':>10} "
        f"{'cpu ms/req':>11} {'pg ms/req':>10} {'cpu ratio':>10} {'non-2xx':>8}"
    )
    for name, rs in runs.items():
        middle = sorted(rs, key=lambda r: r["ratio"])[len(rs) // 2]
        ratios = [r["ratio"] for r in rs]
        worker = statistics.median(r["worker_ms"] for r in rs)
        database = statistics.median(r["pg_ms"] for r in rs)
        cpu_ratio = statistics.median(r["cpu_ratio"] for r in rs)
        print(
            f"{name:36} {statistics.median(r['rps'] for r in rs):7.0f} {middle['p50']:>9} {middle['p99']:>9} "
            f"{statistics.median(ratios):6.2f} {f'{min(ratios):.2f}-{max(ratios):.2f}':>10} "
            f"{worker:11.2f} {database:10.2f} {cpu_ratio:10.2f} {sum(r['errors'] for r in rs):8d}"
        )
    print(
        "medians over the rounds; ratio: req/s against the bare endpoint's in the same round (target >= 0.50 for "
        "every FHIR row); cpu ratio: the bare worker's CPU per request against the facade worker's and its "
        "PostgreSQL sessions' together"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
