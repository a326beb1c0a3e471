"""Benchmark: FHIR read and patient search against a bare Flask endpoint, both under gunicorn.

Usage: .venv/bin/python -m scripts.bench_api [--studies 300] [--workers 1] [--seconds 10] [--connections 16]

Loads a generated data set into a SQLite store, then serves (a) a bare Flask "hello" app and
(b) the facade, each with the same gunicorn settings, and drives both with wrk from Debian
(`apt-get install wrk`) over a list of real ids. Prints requests/s, p50 and p99, and each
figure as a ratio of the bare endpoint measured in the same run (target: >= 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

from scripts.dataset import generate
from testbed.orthanc import free_port

ROOT = Path(__file__).resolve().parents[1]

BARE_APP = """
from flask import Flask

app = Flask("bare")

@app.get("/hello")
def hello():
    return "hello"
"""


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--data", type=Path, default=Path(".bench/folder"))
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed: apt-get install wrk")
    generate(args.data, args.studies, 3, 10)
    python = sys.executable
    gunicorn = [python, "-m", "gunicorn", "-w", str(args.workers), "-k", "sync", "--log-level", "warning"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "config.yaml"
        port = free_port()
        config.write_text(
            yaml.safe_dump(
                {
                    "store": f"sqlite:///{tmp / 'bench.db'}",
                    "server": {"base_url": f"http://127.0.0.1:{port}/fhir"},
                    "security": {"open": True},
                    "sources": [{"name": "bench", "type": "folder", "path": str(args.data.resolve())}],
                }
            )
        )
        env = {**os.environ, "IMAGING_FACADE_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
        subprocess.run(
            [python, "-m", "app.cli", "sync", "--config", str(config)], env=env, check=True, capture_output=True
        )
        (tmp / "bare_app.py").write_text(BARE_APP)
        bare_port = free_port()
        results = {}
        bare = start(
            gunicorn + ["-b", f"127.0.0.1:{bare_port}", "--chdir", str(tmp), "bare_app:app"],
            env,
            f"http://127.0.0.1:{bare_port}/hello",
        )
        try:
            results["bare Flask /hello"] = wrk(
                f"http://127.0.0.1:{bare_port}", ["/hello"], args.seconds, args.connections, tmp
            )
        finally:
            bare.terminate()
            bare.wait()
        facade = start(
            gunicorn + ["-b", f"127.0.0.1:{port}", "app.wsgi:application"],
            env,
            f"http://127.0.0.1:{port}/fhir/metadata",
        )
        try:
            studies = requests.get(f"http://127.0.0.1:{port}/fhir/ImagingStudy?_count=1000").json()["entry"]
            study_ids = [e["resource"]["id"] for e in studies]
            patients = sorted({e["resource"]["subject"]["reference"] for e in studies})
            random.Random(7).shuffle(study_ids)
            results["GET ImagingStudy/{id}"] = wrk(
                f"http://127.0.0.1:{port}",
                [f"/fhir/ImagingStudy/{i}" for i in study_ids],
                args.seconds,
                args.connections,
                tmp,
            )
            results["GET ImagingStudy?patient="] = wrk(
                f"http://127.0.0.1:{port}",
                [f"/fhir/ImagingStudy?patient={p}" for p in patients],
                args.seconds,
                args.connections,
                tmp,
            )
        finally:
            facade.terminate()
            facade.wait()
    base = results["bare Flask /hello"]["rps"]
    print(
        f"data: {args.studies} studies (3 series x 10 instances), {len(patients)} patients; "
        f"gunicorn sync workers: {args.workers}; wrk: {args.connections} connections, {args.seconds}s each; "
        f"cpu: {os.cpu_count()}"
    )
    print_rates("endpoint", results, base, 32)
    print("target: ratio >= 0.50 for both FHIR rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
