"""Generated data sets for the benchmarks: a folder of DICOM files, or S/M/L archives in DICOM JSON.

Folder (bench_folder_sync.py, bench_security.py):
    .venv/bin/python -m scripts.dataset OUT_DIR [--studies N] [--series S] [--instances I] [--patients P]

Each study takes a real file shipped with pydicom as its template (CT, MR, ...), keeps its
headers, drops the pixel data and gets new UIDs, patients and dates; patients have several
studies each. Deterministic for the same arguments, so runs can be compared.

Search data sets (bench_search.py, bench_api.py):
    .venv/bin/python -m scripts.dataset --size S|M|L --store URL            # straight into a store
    .venv/bin/python -m scripts.dataset --size S --orthanc http://127.0.0.1:8042 [--orthanc-instances 2]

`archive(size)` describes S = 300, M = 4,000 or L = 40,000 studies the way a DICOMweb source
yields them (StudyRecords of DICOM JSON, PS3.18 F.2, with the query-only counts QIDO-RS
answers); `load_store` runs them through the real mapping into `Store.put_studies`, the
write a sync makes, without files or network. `load_orthanc` sends the same studies to an
Orthanc as DICOM files without pixel data.
"""

from __future__ import annotations

import argparse
import io
import math
import multiprocessing
import os
import random
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import pydicom
import requests
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from app.identity.settings import DEFAULT as DEFAULT_IDENTITY
from app.mapping import map_endpoint, map_study
from app.mapping.context import MappingContext
from app.sources.base import SeriesRecord, StudyRecord

TEMPLATES = ["CT_small.dcm", "MR_small.dcm"]
FAMILIES = ["Smith", "Müller", "Garcia", "Nguyen", "Kowalski", "Rossi", "Dubois", "Tanaka", "Olsen", "Silva"]
GIVENS = ["Anna", "Ben", "Chloé", "David", "Eva", "Felix", "Grace", "Hugo", "Ines", "Jonas"]


def _template(name: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file(name))
    for keyword in ("PixelData", "OtherPatientIDsSequence"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8, for the accented names below
    return ds


def generate(
    out: Path, studies: int = 300, series: int = 3, instances: int = 10, patients: int | None = None, seed: int = 7
) -> int:
    """Write the data set; return the number of files. Skips the work if it is already there."""
    out.mkdir(parents=True, exist_ok=True)
    marker = out / f".complete-{studies}-{series}-{instances}-{patients}-{seed}"
    if marker.exists():
        return studies * series * instances
    rng = random.Random(seed)
    templates = [_template(name) for name in TEMPLATES]
    patients = patients or max(1, studies // 3)
    count = 0
    for s in range(studies):
        ds = templates[s % len(templates)]
        p = s % patients
        study_uid = generate_uid(entropy_srcs=[str(seed), "study", str(s)])
        ds.PatientID = f"P{p:06d}"
        ds.PatientName = f"{FAMILIES[p % 10]}^{GIVENS[(p // 10) % 10]}"
        ds.PatientBirthDate = f"{1930 + p % 80}{1 + p % 12:02d}{1 + p % 28:02d}"
        ds.PatientSex = "MF"[p % 2]
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = f"{2010 + s % 15}{1 + s % 12:02d}{1 + s % 28:02d}"
        ds.StudyTime = f"{8 + s % 10:02d}{rng.randrange(60):02d}00"
        ds.AccessionNumber = f"ACC{s:07d}"
        ds.StudyDescription = f"Study {s}"
        study_dir = out / f"study{s:06d}"
        study_dir.mkdir(exist_ok=True)
        for r in range(series):
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[study_uid, "series", str(r)])
            ds.SeriesNumber = r + 1
            ds.SeriesDescription = f"Series {r + 1}"
            for i in range(instances):
                ds.SOPInstanceUID = generate_uid(entropy_srcs=[study_uid, str(r), str(i)])
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.InstanceNumber = i + 1
                ds.save_as(study_dir / f"{r:03d}_{i:04d}.dcm", enforce_file_format=True)
                count += 1
    marker.touch()
    return count


# ---------------------------------------------------------------- S/M/L archives in DICOM JSON

SIZES = {"S": 300, "M": 4_000, "L": 40_000}
SOURCE = "bench"
ZONE = "Europe/Berlin"
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root
FIRST_DAY = date(2010, 1, 1)
DAYS = 15 * 365
#: PS3.4 SOP classes by what the series holds
SOP = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "USMF": "1.2.840.10008.5.1.4.1.1.3.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "SR": "1.2.840.10008.5.1.4.1.1.88.67",
}
SYLLABLES = [
    "ka",
    "lo",
    "wen",
    "mü",
    "ber",
    "sa",
    "ri",
    "to",
    "nak",
    "dé",
    "vi",
    "gar",
    "os",
    "len",
    "pa",
    "chi",
    "ro",
    "ssi",
    "ha",
    "ns",
    "ek",
    "mo",
    "ré",
    "zu",
    "li",
    "an",
    "dor",
    "fa",
    "bü",
    "ta",
    "ger",
    "ni",
]
GIVEN_NAMES = [
    "Anna",
    "Ben",
    "Chloé",
    "David",
    "Eva",
    "Felix",
    "Grace",
    "Hugo",
    "Inès",
    "Jonas",
    "Karin",
    "Luis",
    "Maria",
    "Noah",
    "Olga",
    "Paul",
    "Quentin",
    "Rosa",
    "Sven",
    "Tomás",
    "Ursula",
    "Victor",
    "Wanda",
    "Xavier",
    "Yusuf",
    "Zoë",
]
QUERY_ONLY = ("00080061", "00201206", "00201208", "00201209")  # answered by QIDO-RS, never in a file


def _log_uniform(rng: random.Random, low: int, high: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))


def _series_plan(kind: str, rng: random.Random) -> list[tuple]:
    """(modality, SOP key, body part, description, instances, image type) of each series of one study."""
    axial = ["ORIGINAL", "PRIMARY", "AXIAL"]
    if kind == "CT":
        part = rng.choice(["CHEST", "ABDOMEN", "HEAD", "PELVIS", "CHESTABDPELVIS"])
        plan = [("CT", "CT", part, "Scout", rng.randint(1, 3), ["ORIGINAL", "PRIMARY", "LOCALIZER"])]
        plan += [
            ("CT", "CT", part, f"Axial {k + 1}", _log_uniform(rng, 20, 300), axial) for k in range(rng.randint(1, 4))
        ]
        if rng.random() < 0.3:
            plan.append(("SR", "SR", None, "Dose Report", 1, None))
        return plan
    if kind == "MR":
        part = rng.choice(["BRAIN", "KNEE", "LSPINE", "SHOULDER", "ABDOMEN"])
        return [
            ("MR", "MR", part, d, _log_uniform(rng, 10, 120), ["ORIGINAL", "PRIMARY", "M"])
            for d in rng.sample(
                ["T1 SE", "T2 TSE", "FLAIR", "DWI", "T1 post", "STIR", "PD FS", "SWI"], rng.randint(3, 8)
            )
        ]
    if kind in ("CR", "DX"):
        part = rng.choice(["CHEST", "HAND", "KNEE", "PELVIS", "FOOT"])
        return [
            (kind, kind, part, v, rng.randint(1, 2), ["ORIGINAL", "PRIMARY"])
            for v in ["PA", "LAT", "OBL"][: rng.randint(1, 3)]
        ]
    if kind == "US":
        return [
            ("US", rng.choice(["US", "USMF"]), "ABDOMEN", f"US {k + 1}", rng.randint(5, 60), None)
            for k in range(rng.randint(1, 2))
        ]
    if kind == "MG":
        return [("MG", "MG", "BREAST", "Screening", 4, ["ORIGINAL", "PRIMARY"])]
    if kind == "PT":
        return [
            ("PT", "PT", "WHOLEBODY", "PET AC", _log_uniform(rng, 100, 300), axial),
            ("CT", "CT", "WHOLEBODY", "CT AC", _log_uniform(rng, 100, 300), axial),
        ]
    return [("NM", "NM", "WHOLEBODY", f"NM {k + 1}", rng.randint(1, 10), None) for k in range(rng.randint(1, 3))]


#: study kinds with their share of studies
KINDS = [("CT", 30), ("MR", 20), ("CR", 15), ("DX", 10), ("US", 12), ("MG", 5), ("PT", 4), ("NM", 4)]


@dataclass
class PatientPlan:
    mrn: str
    family: str
    given: str
    birth: str
    sex: str
    studies: list[int] = field(default_factory=list)  # indexes into Archive.studies


@dataclass
class StudyPlan:
    uid: str
    patient: int
    day: date
    time: str
    accession: str
    kind: str
    series: list[tuple]


def _pv(vr: str, *values) -> dict:
    return {"vr": vr, "Value": list(values)}


class Archive:
    """S, M or L studies, planned up front (cheap) and turned into DICOM JSON on demand.

    Patients have 1 to 20 studies (3.5 on average), share family names with about two
    other patients at every size (so a name search finds a handful whatever the size), and
    have studies spread over 15 years. Same size and seed, same archive.
    """

    def __init__(self, studies: int, seed: int = 7):
        rng = random.Random(f"{seed}-{studies}")
        self.size = studies
        self.seed = seed
        families = max(8, studies // 12)  # ~3.4 patients per family name (3.5 studies per patient)
        # no name is the start of another (a prefix search finds one family); past L's 3,333
        # families, longer names, as 2 and 3 syllables give too few prefix-free ones
        lengths = (2, 3, 3) if families <= 4_000 else (3, 4, 4)
        pool: list[str] = []
        seen: set[str] = set()
        starts: set[str] = set()  # every start of every name in the pool
        while len(pool) < families:
            name = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice(lengths))).capitalize()
            if name not in starts and not any(name[:k] in seen for k in range(1, len(name))):
                seen.add(name)
                starts.update(name[:k] for k in range(1, len(name) + 1))
                pool.append(name)
        kinds = [k for k, w in KINDS for _ in range(w)]
        self.patients: list[PatientPlan] = []
        self.studies: list[StudyPlan] = []
        while len(self.studies) < studies:
            p = len(self.patients)
            patient = PatientPlan(
                mrn=f"MRN{rng.randrange(10**8):08d}{p:06d}",
                family=rng.choice(pool),
                given=rng.choice(GIVEN_NAMES),
                sex=rng.choice("MF"),
                birth=(date(1930, 1, 1) + timedelta(days=rng.randrange(79 * 365))).strftime("%Y%m%d"),
            )
            self.patients.append(patient)
            for _ in range(min(20, 1 + int(rng.expovariate(1 / 3)), studies - len(self.studies))):
                s = len(self.studies)
                day = FIRST_DAY + timedelta(days=rng.randrange(DAYS))
                kind = rng.choice(kinds)
                self.studies.append(
                    StudyPlan(
                        uid=f"{UID_ROOT}{seed}.{rng.randrange(10**19, 10**20)}",
                        patient=p,
                        day=day,
                        time=f"{rng.randint(7, 19):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
                        accession=f"A{day.year % 100:02d}{s:07d}",
                        kind=kind,
                        series=_series_plan(kind, rng),
                    )
                )
                patient.studies.append(s)

    def instances(self, max_instances: int | None = None) -> int:
        cap = max_instances or 10**9
        return sum(min(n, cap) for plan in self.studies for _m, _k, _b, _d, n, _t in plan.series)

    def record(self, s: int, max_instances: int | None = None) -> StudyRecord:
        """Study `s` as a DICOMweb source yields it: QIDO-RS study, series and instance answers."""
        plan = self.studies[s]
        patient = self.patients[plan.patient]
        cap = max_instances or 10**9
        series_records = []
        for r, (modality, sop_key, part, description, count, image_type) in enumerate(plan.series):
            series_uid = f"{plan.uid}.{r + 1}"
            count = min(count, cap)
            attrs = {
                "00080021": _pv("DA", plan.day.strftime("%Y%m%d")),
                "00080031": _pv("TM", plan.time),
                "00080060": _pv("CS", modality),
                "0008103E": _pv("LO", description),
                "0020000E": _pv("UI", series_uid),
                "00200011": _pv("IS", r + 1),
                "00201209": _pv("IS", count),
            }
            if part:
                attrs["00180015"] = _pv("CS", part)
            sop_class = SOP[sop_key]
            base = {"00080016": _pv("UI", sop_class)}
            if image_type:
                base["00080008"] = _pv("CS", *image_type)
            instances = []
            for i in range(count):
                inst = dict(base)
                inst["00080018"] = _pv("UI", f"{series_uid}.{i + 1}")
                inst["00200013"] = _pv("IS", i + 1)
                if modality == "MG":
                    inst["00200062"] = _pv("CS", "RL"[i % 2])
                instances.append(inst)
            series_records.append(SeriesRecord(attrs=attrs, instances=instances))
        modalities = list(dict.fromkeys(m for m, *_ in plan.series))
        attrs = {
            "00080005": _pv("CS", "ISO_IR 192"),
            "00080020": _pv("DA", plan.day.strftime("%Y%m%d")),
            "00080030": _pv("TM", plan.time),
            "00080050": _pv("SH", plan.accession),
            "00080061": _pv("CS", *modalities),
            "00080080": _pv("LO", "Bench Hospital"),
            "00080090": _pv("PN", {"Alphabetic": f"Referrer^Dr{plan.patient % 50}"}),
            "00081030": _pv("LO", f"{plan.kind} {plan.series[0][2] or ''}".strip()),
            "00100010": _pv("PN", {"Alphabetic": f"{patient.family}^{patient.given}"}),
            "00100020": _pv("LO", patient.mrn),
            "00100030": _pv("DA", patient.birth),
            "00100040": _pv("CS", patient.sex),
            "0020000D": _pv("UI", plan.uid),
            "00201206": _pv("IS", len(series_records)),
            "00201208": _pv("IS", sum(len(x.instances) for x in series_records)),
        }
        return StudyRecord(uid=plan.uid, attrs=attrs, series=series_records)

    def records(self, max_instances: int | None = None) -> Iterator[StudyRecord]:
        for s in range(len(self.studies)):
            yield self.record(s, max_instances)


def archive(size: str | int, seed: int = 7) -> Archive:
    """The S (300), M (4,000) or L (40,000) archive, or one of any number of studies."""
    return Archive(SIZES[size] if isinstance(size, str) else size, seed)


#: the Patient id key of the benchmarks' stores, which they fill without a sync (a deployment's
#: store generates its own, app/store/patient_ids.py)
BENCH_KEY = b"benchmark-patient-id-key-not-for-any-deployment"


def mapping_context(source: str = SOURCE) -> MappingContext:
    return MappingContext(
        source=source,
        timezone=ZONE,
        patient_id_system=f"urn:imaging-facade:source:{source}",
        identity=DEFAULT_IDENTITY.with_key(BENCH_KEY),
    )


def _mapped(args) -> list[tuple[dict, dict]]:
    """Worker: map a chunk of studies of an archive (re-planned in the worker, same seed)."""
    size, seed, start, stop, max_instances = args
    arch = _worker_archive(size, seed)
    ctx = mapping_context()
    out = []
    for s in range(start, stop):
        mapped = map_study(arch.record(s, max_instances), ctx)
        out.append((mapped.imaging_study, mapped.patient))
    return out


_ARCHIVES: dict = {}


class _Inline:
    """Pool stand-in that maps in this process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def imap(self, fn, items):
        return map(fn, items)


def _worker_archive(size: int, seed: int) -> Archive:
    if (size, seed) not in _ARCHIVES:
        _ARCHIVES[(size, seed)] = Archive(size, seed)
    return _ARCHIVES[(size, seed)]


def load_store(
    store, arch: Archive, max_instances: int | None = None, batch: int = 50, processes: int | None = None, progress=None
) -> dict:
    """Map every study of `arch` (app.mapping) and write it with the sync's store write.

    Mapping runs in worker processes (it is pure), writes in this one, `batch` studies per
    transaction (Store.put_studies), then refreshes the planner statistics as a sync does.
    Returns outcome counts and timings.
    """
    ctx = mapping_context()
    store.resources.put(map_endpoint(ctx))
    started = time.perf_counter()
    _ARCHIVES[(arch.size, arch.seed)] = arch  # forked workers inherit the plan
    chunks = [(arch.size, arch.seed, a, min(a + batch, arch.size), max_instances) for a in range(0, arch.size, batch)]
    outcomes: dict = {}
    processes = processes if processes is not None else max(1, (os.cpu_count() or 2) // 2)
    with multiprocessing.get_context("fork").Pool(processes) if processes > 1 else _Inline() as pool:
        done = 0
        for mapped in pool.imap(_mapped, chunks):
            for outcome in store.studies.put_many(mapped, SOURCE):
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
            done += len(mapped)
            if progress:
                progress(done, arch.size)
    store.analyze()  # as a sync does after it changed the store: the planners need the statistics
    return {"outcomes": outcomes, "seconds": time.perf_counter() - started}


def instance_files(record: StudyRecord) -> Iterator[bytes]:
    """Each instance of a study as a DICOM Part 10 file without pixel data (headers only)."""
    study = {k: v for k, v in record.attrs.items() if k not in QUERY_ONLY}
    for series in record.series:
        if not series.instances:
            continue
        first, *_ = series.instances
        ds = Dataset.from_json({**study, **{k: v for k, v in series.attrs.items() if k not in QUERY_ONLY}, **first})
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        for inst in series.instances:  # instances of a series differ in these attributes only
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = inst["00080018"]["Value"][0]
            ds.InstanceNumber = inst["00200013"]["Value"][0]
            if "00200062" in inst:
                ds.ImageLaterality = inst["00200062"]["Value"][0]
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
            yield buffer.getvalue()


def load_orthanc(
    url: str,
    arch: Archive,
    max_instances: int | None = None,
    workers: int = 4,
    auth: tuple[str, str] | None = None,
    progress=None,
) -> dict:
    """POST every instance of `arch` (at most `max_instances` per series) to an Orthanc's /instances.

    Returns counts and timing; raises if Orthanc refuses an instance.
    """
    local = threading.local()

    def post(body: bytes) -> None:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.auth = auth
        response = session.post(
            url.rstrip("/") + "/instances", data=body, headers={"Content-Type": "application/dicom"}, timeout=60
        )
        if response.status_code != 200:
            raise RuntimeError(f"Orthanc refused an instance: HTTP {response.status_code} {response.text[:200]}")

    started = time.perf_counter()
    sent = 0
    in_flight: set = set()
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Orthanc stores while the next files are built
        for s, record in enumerate(arch.records(max_instances)):
            for body in instance_files(record):
                if len(in_flight) >= 8 * workers:
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
                in_flight.add(pool.submit(post, body))
                sent += 1
            if progress:
                progress(s + 1, arch.size)
        for future in in_flight:
            future.result()
    return {"instances": sent, "seconds": time.perf_counter() - started}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", help="write a folder of DICOM files here")
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--series", type=int, default=3)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--patients", type=int, default=None)
    parser.add_argument("--size", choices=sorted(SIZES), help="the S, M or L search data set")
    parser.add_argument("--store", help="load --size into this store URL (mapping + Store.put_studies)")
    parser.add_argument("--orthanc", help="post --size to this Orthanc's /instances (headers only)")
    parser.add_argument("--orthanc-instances", type=int, default=None, help="at most this many instances per series")
    args = parser.parse_args(argv)
    if args.out is None and not args.size:
        parser.error("give OUT_DIR (a folder of files) or --size with --store and/or --orthanc")
    if args.out is not None:
        n = generate(args.out, args.studies, args.series, args.instances, args.patients)
        print(f"{n} files in {args.out}")
    if args.size:
        if not (args.store or args.orthanc):
            parser.error("--size needs --store and/or --orthanc")
        arch = archive(args.size)
        print(f"{args.size}: {arch.size} studies, {len(arch.patients)} patients, {arch.instances()} instances")
        if args.store:
            from app.store.repository import Store

            store = Store(args.store, ZONE)
            try:
                stats = load_store(store, arch)
            finally:
                store.close()
            print(f"store: {stats['outcomes']} in {stats['seconds']:.0f} s")
        if args.orthanc:
            stats = load_orthanc(args.orthanc, arch, args.orthanc_instances)
            cap = f" (at most {args.orthanc_instances} per series)" if args.orthanc_instances else ""
            print(f"orthanc: {stats['instances']} instances{cap} in {stats['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
