"""Generate a folder of realistic DICOM headers from real pydicom sample files.

Usage: python scripts/dataset.py OUT_DIR [--studies N] [--series S] [--instances I] [--patients P]

Each study takes a real file shipped with pydicom as its template (CT, MR, ...), keeps its
headers, drops the pixel data and gets new UIDs, patients and dates; patients have several
studies each. Deterministic for the same arguments, so runs can be compared.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

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


def generate(out: Path, studies: int = 300, series: int = 3, instances: int = 10, patients: int | None = None,
             seed: int = 7) -> int:
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--series", type=int, default=3)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--patients", type=int, default=None)
    args = parser.parse_args(argv)
    n = generate(args.out, args.studies, args.series, args.instances, args.patients)
    print(f"{n} files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
