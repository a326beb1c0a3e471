"""dcmtk's findscu, an independent DICOM stack, asking an Orthanc what the facade's DIMSE source
asks it: what both find must agree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom

from testbed.orthanc import OrthancServer


def findscu(server: OrthancServer, out: Path, *keys: str, calling_aet: str) -> tuple[list[pydicom.Dataset], str]:
    """findscu at STUDY level (Study Root), asking for StudyInstanceUID and `keys` ("PatientID",
    "StudyDate=20240301"): its answers as pydicom datasets, and its log (final status included)."""
    binary = shutil.which("findscu")
    assert binary, "dcmtk's findscu is needed: apt-get install -y dcmtk"
    out.mkdir(parents=True)
    command = [binary, "-v", "-S", "-aet", calling_aet, "-aec", server.aet, "-X", "-od", str(out)]
    for key in ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", *keys):
        command += ["-k", key]
    done = subprocess.run(command + ["127.0.0.1", str(server.dicom_port)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [pydicom.dcmread(path) for path in sorted(out.glob("rsp*.dcm"))], done.stdout + done.stderr
