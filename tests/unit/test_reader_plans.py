"""The API's reads on PostgreSQL are planned for their values, however often they repeat.

A server under load runs the same search text over and over; psycopg prepares it, and
PostgreSQL would then plan it once for any values. Such a plan cannot tell a week of studies
from a third of the store, and drives an AND of clauses from the wrong one
(app/store/reader.py; docs/benchmarks.md, bench_million).
"""

from __future__ import annotations

import yaml

from app.config import load_config
from app.store.repository import Store
from app.web import create_app
from tests.support import search_data
from tests.support.stores import open_config_data, reset_postgres


def test_a_search_repeated_many_times_is_never_planned_for_any_values(postgres_url, tmp_path):
    reset_postgres(postgres_url)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(open_config_data(postgres_url)))
    config = load_config(path)
    store = Store.from_config(config)
    try:
        search_data.load(store)
        store.analyze()
        app = create_app(config, store)
        client = app.test_client()
        for _ in range(15):  # psycopg prepares at the fifth run; PostgreSQL weighs a generic plan from the sixth
            response = client.get("/fhir/ImagingStudy?started=ge2000-01-01&modality=CT")
            assert response.status_code == 200
            assert response.get_json()["entry"]
        reader = app.extensions["imaging-facade"].reader
        plans = reader.all("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
        searches = [row for row in plans if "idx_date" in row[0]]
        assert searches, "the search was run as a prepared statement"
        assert all(generic == 0 for _sql, generic, _custom in searches), searches
        assert max(custom for _sql, _generic, custom in searches) >= 10
    finally:
        store.close()
