"""A study that cannot be read is quarantined with its reason; a later sync retries it."""

from __future__ import annotations

import shutil

import pydicom
import pytest
from pydicom.data import get_testdata_file

from app.store.repository import Store
from app.sync import sync_source


def test_quarantined_file_is_released_once_it_reads(tmp_path, open_config, sqlite_url):
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copyfile(get_testdata_file("MR_small.dcm"), archive / "good.dcm")
    broken = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del broken.StudyInstanceUID
    broken.save_as(archive / "broken.dcm")
    config = open_config(sqlite_url, sources=[{"name": "sample", "type": "folder", "path": str(archive)}])
    store = Store.from_config(config)

    first = sync_source(store, config.sources[0])
    assert (first.new, first.failed) == (1, 1)
    [entry] = store.quarantine.entries("sample")
    assert entry.key == "broken.dcm" and "StudyInstanceUID" in entry.reason

    again = sync_source(store, config.sources[0])  # still broken: stays, with its first sighting
    assert again.failed == 1 and again.released == 0
    [still] = store.quarantine.entries("sample")
    assert still.first_seen == entry.first_seen and still.last_seen >= entry.last_seen

    shutil.copyfile(get_testdata_file("CT_small.dcm"), archive / "broken.dcm")  # repaired at the source
    fixed = sync_source(store, config.sources[0])
    assert (fixed.new, fixed.failed, fixed.released) == (1, 0, 1)
    assert store.quarantine.entries("sample") == []
    store.close()


@pytest.mark.slow
def test_unreachable_archive_keeps_the_quarantine(tmp_path, open_config, sqlite_url):
    config = open_config(
        sqlite_url, sources=[{"name": "pacs", "type": "dicomweb", "url": "http://127.0.0.1:9/dicom-web", "timeout": 1}]
    )
    store = Store.from_config(config)
    store.quarantine.add("pacs", "1.2.3", "1.2.3", "earlier failure")
    summary = sync_source(store, config.sources[0])
    assert summary.error and "pacs" in summary.error
    assert [q.key for q in store.quarantine.entries("pacs")] == ["1.2.3"]  # an incomplete run releases nothing
    store.close()


def test_whatever_an_archive_sent_can_be_quarantined(store_url):
    """A UID longer than a UID may be, NULs PostgreSQL refuses in text: kept, made storable."""
    store = Store(store_url)
    long_uid = "1.2." + "3" * 76
    store.quarantine.add("pacs", long_uid, long_uid, "StudyInstanceUID is 80 characters long")
    store.quarantine.add("pacs", "bad\x00key", "1.2.3", "reason with a \x00 inside")
    entries = {q.key: q for q in store.quarantine.entries("pacs")}
    assert entries[long_uid].study_uid is None and "80 characters" in entries[long_uid].reason
    assert entries["bad\\0key"].reason == "reason with a \\0 inside" and entries["bad\\0key"].study_uid == "1.2.3"
    store.close()
