"""Benchmark: sync capacity, memory and freshness, each against a baseline from the same run.

Usage: .venv/bin/python -m scripts.bench_sync [--studies 200] [--series 3] [--instances 20]
                                    [--memory-studies 40000] [--freshness 30] [--skip-postgres]

1. Capacity. A generated data set (headers only, from pydicom's real files) is stored into a
   real Orthanc, timed: Orthanc's own ingest rate is the baseline. The facade's DICOMweb
   source then reads every study once and its answers are recorded; replaying the recorded
   QIDO-RS answers (no network) through mapping and store (SQLite, then PostgreSQL) gives
   instances/s. Targets: >= 2,500 instances/s and >= 10x Orthanc's ingest rate.
2. Memory. A full sync of `--memory-studies` studies (the recorded studies again and again
   under new UIDs, the listing held in memory as the DICOMweb source holds it) runs in a
   child process; the peak resident memory during the sync (the high-water mark is reset
   once the recorded answers are read, so reading them does not count) is printed next to
   the resident memory just before it (the baseline). Target: under 300 MB.
3. Freshness. `imaging-facade serve` with `server.watch: true` follows the Orthanc's change
   feed; a new study is stored into Orthanc and FHIR search is asked every 20 ms until it
   answers it. Orthanc's own QIDO-RS visibility of the study, asked the same way, is the
   baseline. Targets: p50 <= 2 s, p95 <= 5 s (a peer that polls once a minute: p50 ~30 s).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import pydicom
import requests
import yaml
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from app.config import load_config
from app.sources.base import SeriesRecord, StudyRecord
from app.sources.dicomweb import DicomwebSource
from app.sources.queried import exact_bytes
from app.store.repository import Store
from app.sync import sync_source
from scripts.dataset import generate
from testbed.orthanc import OrthancServer, free_port
from testbed.postgres import create_database, drop_database

ROOT = Path(__file__).resolve().parents[1]


class ReplaySource:
    """Recorded QIDO-RS answers as a source: the sync does everything but the network."""

    def __init__(self, records: list[StudyRecord]):
        self.records = records
        self.name = "pacs"
        self.stats: dict = {}
        self.listing_complete = True
        self.answers_queries = True
        self.change_feed = None

    def total(self) -> int:
        return len(self.records)

    def iter_studies(self, match=None):
        yield from self.records


class ClonedSource(ReplaySource):
    """`count` studies made from the recorded ones under new UIDs, one at a time.

    The study-level answers of all of them are held, as a DICOMweb listing holds them (JSON
    bytes until fetched); the series and instances of each are made only when it is read, as
    a fetch brings them.
    """

    def __init__(self, records: list[StudyRecord], count: int):
        super().__init__(records)
        self.count = count
        self.listing = []
        for n in range(count):
            attrs = dict(records[n % len(records)].attrs)
            attrs["0020000D"] = {"vr": "UI", "Value": [f"2.25.{uuid.uuid4().int}"]}
            self.listing.append(exact_bytes(orjson.dumps(attrs)))  # held as the DICOMweb source holds its listing

    def total(self) -> int:
        return self.count

    def iter_studies(self, match=None):
        for n, packed in enumerate(self.listing):
            attrs = orjson.loads(packed)
            template = self.records[n % len(self.records)]
            uid = attrs["0020000D"]["Value"][0]
            series = []
            for s, part in enumerate(template.series):
                series_attrs = dict(part.attrs, **{"0020000E": {"vr": "UI", "Value": [f"{uid}.{s}"]}})
                instances = [
                    dict(i, **{"00080018": {"vr": "UI", "Value": [f"{uid}.{s}.{k}"]}})
                    for k, i in enumerate(part.instances)
                ]
                series.append(SeriesRecord(attrs=series_attrs, instances=instances))
            yield StudyRecord(uid=uid, attrs=attrs, series=series)


def _config(folder: Path, store: str, url: str, **source) -> object:
    path = folder / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "store": store,
                "security": {"open": True},
                "sources": [{"name": "pacs", "type": "dicomweb", "url": url, "timezone": "UTC", **source}],
            }
        )
    )
    return load_config(path)


def _instances(records) -> int:
    return sum(len(s.instances) for r in records for s in r.series)


def capacity(args, work: Path) -> tuple[list[StudyRecord], dict]:
    data = work / "data"
    files = generate(data, args.studies, args.series, args.instances)
    paths = sorted(data.rglob("*.dcm"))
    out = {}
    with OrthancServer() as pacs:
        start = time.perf_counter()
        pacs.upload(paths, workers=4)
        out["orthanc ingest"] = files / (time.perf_counter() - start)
        source = DicomwebSource("pacs", pacs.dicomweb_url, page_size=1000)
        records = [r for r in source.iter_studies() if isinstance(r, StudyRecord)]
    (work / "recorded-qido.json").write_bytes(
        orjson.dumps(
            [
                {
                    "uid": r.uid,
                    "attrs": r.attrs,
                    "series": [{"attrs": s.attrs, "instances": s.instances} for s in r.series],
                }
                for r in records
            ]
        )
    )
    count = _instances(records)
    stores = [("SQLite", f"sqlite:///{work / 'replay.db'}")]
    if not args.skip_postgres:
        stores.append(("PostgreSQL", create_database("bench_sync")))
    for name, url in stores:
        config = _config(work, url, "http://127.0.0.1:9/dicom-web")
        store = Store.from_config(config)
        try:
            start = time.perf_counter()
            summary = sync_source(store, config.sources[0], source=ReplaySource(records))
            seconds = time.perf_counter() - start
        finally:
            store.close()
            if url.startswith("postgresql"):
                drop_database(url)
        assert summary.new == len(records) and summary.failed == 0, summary
        out[f"replay into {name}"] = count / seconds
    print(
        f"\n1. capacity: {len(records)} studies, {count} instances ({args.series} series x "
        f"{args.instances} instances), recorded from Orthanc's QIDO-RS"
    )
    base = out["orthanc ingest"]
    print(f"{'':28} {'instances/s':>12} {'vs Orthanc':>11}")
    for name, rate in out.items():
        print(f"{name:28} {rate:12.0f} {rate / base:10.1f}x")
    print("targets: >= 2,500 instances/s and >= 10x Orthanc's ingest")
    return records, out


def memory_child(recorded: Path, count: int, work: Path) -> None:
    """Run in a child process: a full sync of `count` cloned studies; print peak RSS in MB."""
    raw = orjson.loads(recorded.read_bytes())
    records = [
        StudyRecord(
            uid=r["uid"],
            attrs=r["attrs"],
            series=[SeriesRecord(attrs=s["attrs"], instances=s["instances"]) for s in r["series"]],
        )
        for r in raw
    ]
    del raw
    gc.collect()
    config = _config(work, f"sqlite:///{work / 'memory.db'}", "http://127.0.0.1:9/dicom-web")
    store = Store.from_config(config)
    source = ClonedSource(records, count)
    # the peak is the sync's own: Linux resets the high-water mark of the resident set on
    # "5" (proc(5), clear_refs), so reading the recorded answers above does not count
    _reset_peak_rss()
    baseline = _rss_mb("VmRSS")
    start = time.perf_counter()
    summary = sync_source(store, config.sources[0], source=source)
    seconds = time.perf_counter() - start
    peak = _rss_mb("VmHWM")
    print(orjson.dumps({"baseline": baseline, "peak": peak, "studies": summary.new, "seconds": seconds}).decode())


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rss_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory(args, work: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "scripts.bench_sync", "--memory-child", str(args.memory_studies), str(work)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    figures = orjson.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"\n2. memory: full sync of {figures['studies']} studies in {figures['seconds']:.0f} s "
        f"({figures['studies'] / figures['seconds']:.0f} studies/s)"
    )
    print(
        f"   peak resident during the sync: {figures['peak']:.0f} MB (the same process just before it, "
        f"holding the listing's template studies: {figures['baseline']:.0f} MB); target: under 300 MB"
    )


def _new_study(folder: Path, n: int) -> tuple[Path, str]:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = f"FRESH{n:04d}"
    del ds.PixelData
    path = folder / f"fresh{n}.dcm"
    ds.save_as(path)
    return path, str(ds.StudyInstanceUID)


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))]


def freshness(args, work: Path) -> None:
    port = free_port()
    folder = work / "fresh"
    folder.mkdir(exist_ok=True)
    with OrthancServer() as pacs:
        config = work / "fresh.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "store": f"sqlite:///{work / 'fresh.db'}",
                    "server": {"base_url": f"http://127.0.0.1:{port}/fhir", "port": port, "workers": 1, "watch": True},
                    "security": {"open": True},
                    "sources": [
                        {
                            "name": "pacs",
                            "type": "dicomweb",
                            "url": pacs.dicomweb_url,
                            "timezone": "UTC",
                            "changes": "orthanc",
                        }
                    ],
                }
            )
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).json()["sources"][0]["lastSuccess"]:
                        break
                except (requests.RequestException, ValueError, KeyError, IndexError):
                    pass
                time.sleep(0.2)
            fhir, qido = [], []
            for n in range(args.freshness):
                path, uid = _new_study(folder, n)
                start = time.perf_counter()
                pacs.upload([path])
                seen: dict[str, float] = {}
                while len(seen) < 2 and time.perf_counter() - start < 120:
                    if (
                        "qido" not in seen
                        and requests.get(
                            f"{pacs.dicomweb_url}/studies", params={"StudyInstanceUID": uid}, timeout=5
                        ).json()
                    ):
                        seen["qido"] = time.perf_counter() - start
                    if "fhir" not in seen and requests.get(
                        f"http://127.0.0.1:{port}/fhir/ImagingStudy",
                        timeout=5,
                        params={"identifier": f"urn:dicom:uid|urn:oid:{uid}"},
                    ).json().get("total"):
                        seen["fhir"] = time.perf_counter() - start
                    time.sleep(0.02)
                fhir.append(seen.get("fhir", float("inf")))
                qido.append(seen.get("qido", float("inf")))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"\n3. freshness: {args.freshness} new studies stored into Orthanc one by one; watch mode on its change feed")
    print(f"{'':40} {'p50':>7} {'p95':>7}")
    print(f"{'found by FHIR search':40} {statistics.median(fhir):6.2f}s {_percentile(fhir, 95):6.2f}s")
    print(f"{'found by Orthanc QIDO-RS (baseline)':40} {statistics.median(qido):6.2f}s {_percentile(qido, 95):6.2f}s")
    print("targets: p50 <= 2 s, p95 <= 5 s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--series", type=int, default=3)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--memory-studies", type=int, default=40000)
    parser.add_argument("--freshness", type=int, default=30)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        count, work = args.memory_child
        memory_child(Path(work) / "recorded-qido.json", int(count), Path(work))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        work = Path(tmp)
        capacity(args, work)
        if args.memory_studies:
            memory(args, work)
        if args.freshness:
            freshness(args, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
