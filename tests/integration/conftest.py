"""Fixtures talking to real peers: one Orthanc (with DICOMweb) per test session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/ has no __init__.py: import orthanc.py

from orthanc import OrthancServer, readable_testdata_files


@pytest.fixture(scope="session")
def orthanc():
    """A running Orthanc holding every readable pydicom test file."""
    with OrthancServer() as server:
        server.upload(readable_testdata_files())
        yield server
