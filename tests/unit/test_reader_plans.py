"""The API's reads on PostgreSQL are planned for their values, however often they repeat,
except lookups by key, which one plan serves whatever the key.

A server under load runs the same search text over and over. Planned once for any values,
PostgreSQL cannot tell a week of studies from a third of the store, and drives an AND of
clauses from the wrong one (app/store/reader.py; docs/benchmarks.md, bench_million). A
patient's studies or a resource by id are one index probe whatever the value; planning them
again on every run cost more than running them.
"""

from __future__ import annotations

import pytest
import yaml

from app.config import load_config
from app.store.repository import Store
from app.web import create_app
from tests.support import search_data
from tests.support.stores import open_config_data, reset_postgres


@pytest.fixture
def served(postgres_url, tmp_path):
    reset_postgres(postgres_url)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(open_config_data(postgres_url)))
    config = load_config(path)
    store = Store.from_config(config)
    try:
        search_data.load(store)
        store.analyze()
        yield create_app(config, store)
    finally:
        store.close()


def _repeat(app, url: str) -> list[tuple[str, int, int]]:
    """Run `url` 15 times (PostgreSQL weighs a generic plan from a prepared statement's sixth
    run); (statement, generic plans, custom plans) of what this connection prepared."""
    client = app.test_client()
    for _ in range(15):
        response = client.get(url)
        assert response.status_code == 200
        assert response.get_json()["entry"]
    reader = app.extensions["imaging-facade"].reader
    return reader.all("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")


def test_a_search_repeated_many_times_is_never_planned_for_any_values(served):
    prepared = _repeat(served, "/fhir/ImagingStudy?started=ge2000-01-01&modality=CT")
    assert all(generic == 0 for sql, generic, _custom in prepared if "idx_date" in sql), prepared


def test_a_patients_studies_are_looked_up_with_one_plan_for_any_patient(served):
    prepared = _repeat(served, "/fhir/ImagingStudy?patient=Patient/alice")
    searches = [row for row in prepared if "idx_reference" in row[0]]
    assert searches, "the search was not prepared"
    assert max(generic for _sql, generic, _custom in searches) >= 5, searches


def test_a_read_by_id_is_looked_up_with_one_plan_for_any_id(served):
    client = served.test_client()
    ids = [e["resource"]["id"] for e in client.get("/fhir/ImagingStudy").get_json()["entry"]]
    for _ in range(10):
        for rid in ids:
            assert client.get(f"/fhir/ImagingStudy/{rid}").status_code == 200
    reader = served.extensions["imaging-facade"].reader
    prepared = reader.all("SELECT statement, generic_plans FROM pg_prepared_statements")
    reads = [row for row in prepared if row[0].startswith("SELECT version, last_updated, content FROM resource")]
    assert reads and reads[0][1] > 0, prepared
