"""Fixtures talking to real peers: one Orthanc (with DICOMweb) per test session."""

from __future__ import annotations

import pytest

from testbed.orthanc import OrthancServer, readable_testdata_files


@pytest.fixture(scope="session")
def orthanc():
    """A running Orthanc holding every readable pydicom test file."""
    with OrthancServer() as server:
        server.upload(readable_testdata_files())
        yield server
