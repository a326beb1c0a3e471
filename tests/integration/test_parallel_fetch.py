"""Reading studies in parallel (`concurrency`) against a real Orthanc: the same studies in the
same order, the same store and summary as a sequential sync; never more requests or
associations at once than `concurrency`; a Retry-After holds back every thread; no thread
outlives the run.

The fault proxy and the association relay of tests/support/faults.py stand between the source
and Orthanc where a test counts what is in flight or needs a 429/503 answer (a real Orthanc
never sends one); everything behind them is the real archive.
"""

from __future__ import annotations

import threading

import orjson
import pytest
from sqlalchemy import select

from app.sources.dicomweb import DicomwebSource
from app.sources.dimse import DimseSource
from app.store.repository import Store
from app.store.tables import Resource, StudyCopy
from app.sync import sync_source
from tests.support.faults import AssociationRelay, FaultProxy
from tests.support.keys import SHARED_IDENTITY

pytestmark = [pytest.mark.orthanc]

KINDS = ["dicomweb", "dimse"]


def _source_keys(kind: str, orthanc, *, url: str | None = None, port: int | None = None) -> dict:
    if kind == "dicomweb":
        return {"name": "pacs", "type": "dicomweb", "url": url or orthanc.dicomweb_url, "timezone": "UTC"}
    return {
        "name": "pacs",
        "type": "dimse",
        "host": "127.0.0.1",
        "port": port or orthanc.dicom_port,
        "called_aet": orthanc.aet,
        "timezone": "UTC",
    }


def _open(kind: str, orthanc, concurrency: int) -> DicomwebSource | DimseSource:
    if kind == "dicomweb":
        return DicomwebSource("pacs", orthanc.dicomweb_url, concurrency=concurrency)
    return DimseSource("pacs", "127.0.0.1", orthanc.dicom_port, orthanc.aet, concurrency=concurrency)


def _sync(write_config, tmp_path, name: str, keys: dict, concurrency: int):
    """One full sync into a store of its own: (summary, store), the store still open."""
    config = write_config(
        {
            "store": f"sqlite:///{tmp_path / name}.db",
            "security": {"open": True},
            "identity": SHARED_IDENTITY,  # stores of separate runs are compared row for row
            "sources": [{**keys, "concurrency": concurrency}],
        },
        name=f"{name}.yaml",
    )
    store = Store.from_config(config)
    return sync_source(store, config.sources[0]), store


def _stored(store: Store) -> dict:
    """What a sync stored, without what differs from run to run (meta, times)."""
    with store.engine.connect() as conn:
        resources = conn.execute(select(Resource.rtype, Resource.id, Resource.content)).all()
        copies = conn.execute(select(StudyCopy.study_uid, StudyCopy.archive_key, StudyCopy.content)).all()
        # SQLite's rowid is the order the copies were stored in
        order = [row[0] for row in conn.exec_driver_sql("SELECT study_uid FROM study_copy ORDER BY rowid")]
    return {
        "resources": {
            (r.rtype, r.id): {k: v for k, v in orjson.loads(r.content).items() if k != "meta"} for r in resources
        },
        "copies": {(c.study_uid, c.archive_key): orjson.loads(c.content) for c in copies},
        "order": order,
        "quarantine": [(q.key, q.reason) for q in store.quarantine.entries()],
    }


def _summary(summary) -> dict:
    return {k: v for k, v in summary.as_dict().items() if k != "seconds"}


def _reading_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("source-")]


# -- the same result as a sequential run ---------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_parallel_reading_gives_a_sequential_runs_studies_in_its_order(orthanc, kind):
    sequential = _open(kind, orthanc, 1)
    expected = list(sequential.iter_studies())
    assert len(expected) >= 25  # enough studies that eight at once are read ahead many times over

    parallel = _open(kind, orthanc, 8)
    assert list(parallel.iter_studies()) == expected  # records, failures, repairs, and their order
    assert parallel.stats == sequential.stats
    assert _reading_threads() == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_parallel_sync_stores_what_a_sequential_one_stores(orthanc, write_config, tmp_path, kind):
    keys = _source_keys(kind, orthanc)
    one, one_store = _sync(write_config, tmp_path, "one", keys, concurrency=1)
    four, four_store = _sync(write_config, tmp_path, "four", keys, concurrency=4)
    assert one.error is None and one.new >= 25
    assert _summary(four) == _summary(one)  # the summary, the source's counters included
    assert _stored(four_store) == _stored(one_store)  # the same resources and copies, stored in the same order
    one_store.close()
    four_store.close()


# -- what reaches the archive at once ------------------------------------------------------
@pytest.mark.parametrize("concurrency", [1, 4])
def test_never_more_requests_in_flight_than_concurrency(orthanc, write_config, tmp_path, concurrency):
    with FaultProxy(orthanc.url, delay=0.03) as proxy:  # a slow network: requests overlap
        keys = _source_keys("dicomweb", orthanc, url=proxy.url + "/dicom-web")
        summary, store = _sync(write_config, tmp_path, "slow", keys, concurrency)
        store.close()
    assert summary.error is None and summary.failed == 0
    assert proxy.max_in_flight == concurrency
    assert proxy.requests == summary.source_stats["requests"]


@pytest.mark.parametrize("concurrency", [1, 3])
def test_never_more_associations_open_than_concurrency(orthanc, write_config, tmp_path, concurrency):
    with AssociationRelay(orthanc.dicom_port, connect_delay=0.05) as relay:
        keys = _source_keys("dimse", orthanc, port=relay.port)
        summary, store = _sync(write_config, tmp_path, "relayed", keys, concurrency)
        store.close()
    assert summary.error is None and summary.failed == 0
    assert relay.max_open == concurrency
    # the listing's association, then one per study
    assert relay.associations == summary.source_stats["associations"] == 1 + summary.source_stats["studies_listed"]


# -- an archive asking to wait -------------------------------------------------------------
def test_retry_after_holds_back_every_thread_and_loses_nothing(orthanc, write_config, tmp_path):
    with FaultProxy(orthanc.url) as proxy:
        keys = _source_keys("dicomweb", orthanc, url=proxy.url + "/dicom-web")
        _, clean_store = _sync(write_config, tmp_path, "clean", keys, concurrency=1)
        proxy.only = "/series"  # the listing goes through; the archive is busy once studies are read
        proxy.fail(1, 429, retry_after=2)
        proxy.fail(1, 503, retry_after=2)
        # a slow network: without the hold, the threads not told to wait would go on asking
        # throughout the wait, before reading ahead reaches its bound
        proxy.delay = 0.2
        proxy.arrivals.clear()
        summary, store = _sync(write_config, tmp_path, "busy", keys, concurrency=4)
    assert summary.error is None and summary.failed == 0
    assert summary.source_stats["retries"] == 2  # each busy answer was waited out once
    assert _stored(store) == _stored(clean_store)
    # Retry-After asks the client to wait: no thread sent anything while it ran (the margins
    # leave time for requests already on their way when the first busy answer came)
    busy = proxy.failed_at[0]
    assert [t - busy for t in proxy.arrivals if busy + 0.4 < t < busy + 1.6] == []
    assert max(proxy.arrivals) > busy + 2  # and the sync went on afterwards
    store.close()
    clean_store.close()


# -- threads -------------------------------------------------------------------------------
def test_a_reader_that_stops_early_leaves_no_thread_behind(orthanc):
    source = _open("dicomweb", orthanc, 4)
    studies = source.iter_studies()
    first = [next(studies) for _ in range(3)]
    assert len(_reading_threads()) == 4  # reading ahead
    studies.close()
    assert _reading_threads() == []
    assert [s.uid for s in first] == [s.uid for s in list(_open("dicomweb", orthanc, 1).iter_studies())[:3]]


def test_concurrency_one_reads_in_the_callers_thread(orthanc):
    studies = _open("dimse", orthanc, 1).iter_studies()
    next(studies)
    assert _reading_threads() == []
    studies.close()
