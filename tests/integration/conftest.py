"""Fixtures talking to real peers: one Orthanc (with DICOMweb) per test session."""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_files

sys.path.insert(0, str(Path(__file__).parent))  # tests/ has no __init__.py: import orthanc.py

from orthanc import OrthancServer  # noqa: E402


def readable_testdata_files() -> list[str]:
    """pydicom's shipped test files that pydicom reads as DICOM instances.

    Part 10 files, plus files without preamble that still carry SOP and Study Instance
    UIDs; Orthanc decides about the rest (its rejections end up in `orthanc.rejected`).
    """
    files = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(get_testdata_files()):
            if not os.path.isfile(path):
                continue
            try:
                pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - no preamble: keep it only if it is an instance
                try:
                    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                except Exception:  # noqa: BLE001
                    continue
                if "SOPInstanceUID" not in ds or "StudyInstanceUID" not in ds:
                    continue
            files.append(path)
    return files


@pytest.fixture(scope="session")
def orthanc():
    """A running Orthanc holding every readable pydicom test file."""
    with OrthancServer() as server:
        server.upload(readable_testdata_files())
        yield server
