"""Fixtures talking to real peers: one Orthanc (with DICOMweb) per test session."""

from __future__ import annotations

import pytest

from testbed.orthanc import OrthancServer, readable_testdata_files
from tests.support.keys import SHARED_SECRET, SHARED_SECRET_ENV
from tests.support.stores import reset_postgres


@pytest.fixture(scope="session", autouse=True)
def _one_patient_id_key():
    """The key a config's `identity.secret: ${PATIENT_ID_SECRET}` names (tests/support/keys.py),
    set for the whole session: module fixtures make stores before any test's own fixtures run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SHARED_SECRET_ENV, SHARED_SECRET)
        yield


@pytest.fixture(scope="session")
def orthanc():
    """A running Orthanc holding every readable pydicom test file."""
    with OrthancServer() as server:
        server.upload(readable_testdata_files())
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path):
    """A database with no tables at all, once SQLite and once PostgreSQL (the migration tests)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'facade.db'}"
    url = request.getfixturevalue("postgres_url")
    reset_postgres(url)
    return url
