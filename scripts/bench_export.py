"""Bulk Data export speed and memory: ImagingStudy resources per second into ndjson, and the
resident memory of the exporting process, on PostgreSQL (or SQLite).

    .venv/bin/python -m scripts.bench_export [--studies 100000] [--databases postgresql,sqlite]

The store holds `studies` ImagingStudies of realistic size (three series, an Endpoint, about 2 kB
of JSON each). Each export runs in a process of its own (its peak resident memory is its own),
after one unmeasured read that warms the database's cache: first the baseline, one plain
`SELECT content` read in pages of the same size and written to a file with a newline after
each; then the export as the server runs it (app/export/run.py: the
search SQL, keyset pages, the ndjson writer). It prints both rates, their ratio, and each
process's peak resident memory. Targets (issue 14): at least 5,000 resources/s, under 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from sqlalchemy import text

from app.export.params import ExportRequest
from app.export.run import Where, run_export
from app.store.reader import Reader
from app.store.repository import Store
from testbed.postgres import ADMIN_URL, create_database, drop_database

POSTGRES_ADMIN = os.environ.get("FACADE_BENCH_POSTGRES", ADMIN_URL)
PAGE = 1000
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def study(i: int) -> bytes:
    uid = f"1.2.826.0.1.3680043.8.498.{i}"
    return orjson.dumps(
        {
            "resourceType": "ImagingStudy",
            "id": uid,
            "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000Z"},
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
            "status": "available",
            "modality": [{"system": DCM, "code": "CT"}],
            "subject": {"reference": f"Patient/p{i % 20000}"},
            "started": "2025-03-04T10:11:12Z",
            "endpoint": [{"reference": "Endpoint/pacs"}],
            "numberOfSeries": 3,
            "numberOfInstances": 300,
            "description": "CT CHEST WITH CONTRAST",
            "series": [
                {
                    "uid": f"{uid}.{s}",
                    "number": s,
                    "modality": {"system": DCM, "code": "CT"},
                    "description": f"AXIAL {s} MM SOFT TISSUE",
                    "numberOfInstances": 100,
                    "bodySite": {"system": "http://snomed.info/sct", "code": "51185008", "display": "Thorax"},
                    "instance": [
                        {"uid": f"{uid}.{s}.{n}", "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:x"}}
                        for n in range(3)
                    ],
                }
                for s in range(1, 4)
            ],
        }
    )


def fill(url: str, studies: int) -> None:
    store = Store(url)
    with store.engine.begin() as conn:
        for at in range(0, studies, 5000):
            conn.execute(
                text(
                    "INSERT INTO resource (rtype, id, version, last_updated, content_hash, content) "
                    "VALUES ('ImagingStudy', :id, 1, :t, 'x', :content)"
                ),
                [
                    {"id": f"1.2.826.0.1.3680043.8.498.{i}", "t": 1_700_000_000_000_000 + i, "content": study(i)}
                    for i in range(at, min(at + 5000, studies))
                ],
            )
    store.analyze()
    store.close()


def run(kind: str, url: str, out: Path) -> dict:
    """One export in this process: its count, seconds and peak resident memory (MB)."""
    reader = Reader(url)
    started = time.perf_counter()
    if kind == "baseline":
        count, last = 0, ""
        with open(out / "baseline.ndjson", "wb") as f:
            while True:
                rows = reader.all(
                    "SELECT id, content FROM resource WHERE rtype = 'ImagingStudy' AND id > ? ORDER BY id LIMIT ?",
                    (last, PAGE),
                )
                for _rid, content in rows:
                    f.write(content)
                    f.write(b"\n")
                count += len(rows)
                if len(rows) < PAGE:
                    break
                last = rows[-1][0]
    else:
        manifest = run_export(
            reader,
            ExportRequest("system"),
            ["ImagingStudy"],
            {"ImagingStudy": None},
            None,
            out,
            Where("UTC", "http://bench/fhir"),
            PAGE,
            100_000,
            lambda _progress: True,
        )
        count = sum(item["count"] for item in manifest["output"])
    seconds = time.perf_counter() - started
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"count": count, "seconds": seconds, "rss_mb": rss_mb}


def child(kind: str, url: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run(
            [sys.executable, "-m", "scripts.bench_export", "--child", kind, url, out],
            check=True,
            capture_output=True,
            text=True,
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench(database: str, studies: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        if database == "postgresql":
            url = create_database("facade_bench_export", POSTGRES_ADMIN)
        else:
            url = f"sqlite:///{folder}/facade.db"
        try:
            fill(url, studies)
            child("baseline", url)  # warms the database's cache, so neither measured run pays for it
            baseline = child("baseline", url)
            export = child("export", url)
        finally:
            if database == "postgresql":
                drop_database(url)
    assert baseline["count"] == export["count"] == studies, (baseline, export)
    base_rate = baseline["count"] / baseline["seconds"]
    rate = export["count"] / export["seconds"]
    print(
        f"{database}: {studies} ImagingStudy; baseline (plain SELECT into a file) {base_rate:,.0f}/s, "
        f"{baseline['rss_mb']:.0f} MB; export {rate:,.0f}/s ({export['seconds']:.1f} s), "
        f"{export['rss_mb']:.0f} MB peak resident; export/baseline {rate / base_rate:.2f}x"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, url, out = sys.argv[2:5]
        print(json.dumps(run(kind, url, Path(out))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--databases", default="postgresql")
    args = parser.parse_args()
    for database in args.databases.split(","):
        bench(database, args.studies)


if __name__ == "__main__":
    main()
