"""How soon a subscriber hears of a new study: from the sync that stored it returning (the study is
searchable) to its notification arriving at a rest-hook endpoint on a loopback port.

For each database (SQLite, then PostgreSQL): an open server over one folder source, one
Subscription to the `imagingstudy-available` topic (id-only) whose endpoint is a small HTTP
server of this script, then N times: a new study (pydicom's CT_small.dcm under new UIDs) copied
into the folder and synced. Prints the median, 95th percentile and slowest latency, against a
baseline measured in the same run: the read of that study through the API (GET
ImagingStudy/{id}) right after its sync. The notification settings are the defaults
(`subscriptions.poll_interval` 0.2 s).

    .venv/bin/python -m scripts.bench_notify [--studies 50] [--databases sqlite,postgresql]

Target (issue 14): from a study becoming searchable to its notification received, p50 at most
0.5 s and p95 at most 2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pydicom
import yaml
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from app.config import load_config
from app.store.repository import Store
from app.sync import sync_source
from app.web import create_app
from testbed.postgres import ADMIN_URL, create_database, drop_database

POSTGRES_ADMIN = os.environ.get("FACADE_BENCH_POSTGRES", ADMIN_URL)
BASE = "http://bench/fhir"
SD = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"


class Receiver:
    """The subscriber's endpoint: the time each study's notification arrived, by study id."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.handshakes = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the http.server API
                now = time.perf_counter()
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    for entry in body["entry"][1:]:
                        outer.arrived.setdefault(entry["fullUrl"].rsplit("/", 1)[1], now)
                    kinds = [p for p in body["entry"][0]["resource"]["parameter"] if p["name"] == "type"]
                    outer.handshakes += kinds[0]["valueCode"] == "handshake"
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def subscription(endpoint: str) -> dict:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "benchmark",
        "criteria": f"{BASE}/SubscriptionTopic/imagingstudy-available",
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": f"{SD}/backport-payload-content", "valueCode": "id-only"}]},
        },
    }


def new_study(folder: Path, n: int) -> str:
    data = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    data.StudyInstanceUID, data.SeriesInstanceUID, data.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    data.save_as(folder / f"study{n:05d}.dcm")
    return str(data.StudyInstanceUID)


def run(url: str, count: int, work: Path) -> tuple[list[float], list[float]]:
    archive = work / "archive"
    archive.mkdir()
    path = work / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "store": url,
                "server": {"base_url": BASE},
                "security": {"open": True},
                "sources": [{"name": "archive", "type": "folder", "path": str(archive)}],
            }
        )
    )
    config = load_config(path)
    store = Store.from_config(config)
    app = create_app(config, store)
    receiver = Receiver()
    try:
        client = app.test_client()
        made = client.post("/fhir/Subscription", json=subscription(receiver.url))
        assert made.status_code == 201, made.get_data(as_text=True)
        while not receiver.handshakes:
            time.sleep(0.01)
        latencies, reads = [], []
        for n in range(count):
            new_study(archive, n)
            before = set(receiver.arrived)
            sync_source(store, config.sources[0])
            searchable = time.perf_counter()
            ids = [rid for rid in _study_ids(client) if rid not in before]
            started = time.perf_counter()
            assert client.get(f"/fhir/ImagingStudy/{ids[0]}").status_code == 200
            reads.append(time.perf_counter() - started)
            deadline = searchable + 30
            while ids[0] not in receiver.arrived and time.perf_counter() < deadline:
                time.sleep(0.002)
            latencies.append(receiver.arrived[ids[0]] - searchable)
        return latencies, reads
    finally:
        app.extensions["imaging-facade-notify"].stop()
        receiver.server.shutdown()
        store.close()


def _study_ids(client) -> list[str]:
    bundle = client.get("/fhir/ImagingStudy?_count=1000&_elements=id").get_json()
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    for database in args.databases.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            url = (
                f"sqlite:///{work / 'facade.db'}"
                if database == "sqlite"
                else create_database("facade_bench_notify", POSTGRES_ADMIN)
            )
            try:
                latencies, reads = run(url, args.studies, work)
            finally:
                if database != "sqlite":
                    drop_database(url, POSTGRES_ADMIN)
        ordered = sorted(latencies)
        p50, p95 = statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.95) - 1)]
        read = statistics.median(reads)
        print(
            f"{database}: {len(ordered)} studies; notification after the study became searchable: "
            f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms; "
            f"baseline read of the study {read * 1000:.1f} ms (p50 {p50 / read:.0f}x, p95 {p95 / read:.0f}x); "
            f"target p50 <= 500 ms, p95 <= 2000 ms: {'met' if p50 <= 0.5 and p95 <= 2 else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
