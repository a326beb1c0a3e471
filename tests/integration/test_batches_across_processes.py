"""On PostgreSQL a batch of studies waits until no other process stores one, so that two writers
(the workers of a distributed sync, a watcher and on-demand fetches) never rebuild one Patient
from two different views of its studies: the later commit would drop the other's contribution."""

from __future__ import annotations

import threading

import orjson
import pytest

from app.store.repository import Store
from tests.support.people import person, study

pytestmark = [pytest.mark.postgres]


def test_a_batch_waits_for_another_stores_one(postgres_url):
    first, second = Store(postgres_url), Store(postgres_url)  # two engines: two processes' connections
    entered = threading.Event()
    try:
        with first.batch():
            waiting = threading.Thread(target=lambda: (second.batch().__enter__(), entered.set()), daemon=True)
            waiting.start()
            assert not entered.wait(1.0)  # the other batch waits while this one is open...
        assert entered.wait(10)  # ...and goes on once it ended
    finally:
        waiting.join(10)
        first.close()
        second.close()


def test_two_writers_of_one_patient_keep_both_studies(postgres_url):
    """Two stores each put a study of the same patient at the same time: the Patient served
    merges both (each study adds an identifier of its own)."""
    stores = [Store(postgres_url) for _ in range(2)]
    barrier = threading.Barrier(2)

    def put(store: Store, n: int) -> None:
        patient = person("urn:oid:1.2.3", "shared", "Doe", "Jo", "1970-01-01", "female")
        patient["identifier"].append({"system": "urn:oid:1.2.4", "value": f"mrn-{n}"})
        barrier.wait()
        for round_ in range(20):
            store.studies.put(study(f"1.2.3.{n}.{round_}", patient), patient, f"source-{n}")

    threads = [threading.Thread(target=put, args=(store, n)) for n, store in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    shared = person("urn:oid:1.2.3", "shared", "Doe", "Jo", "1970-01-01", "female")["id"]
    with stores[0].engine.connect() as conn:
        content = conn.exec_driver_sql("SELECT content FROM resource WHERE rtype = 'Patient' AND id = %s", (shared,))
        served = orjson.loads(content.scalar_one())
    for store in stores:
        store.close()
    values = {i["value"] for i in served["identifier"]}
    assert {"mrn-0", "mrn-1"} <= values
