"""A database connection that dies between requests costs no request (issue 16, point 21).

PostgreSQL ends sessions under an administrator's `pg_terminate_backend`, a restart or a
failover; each worker's read connection then fails on its next statement. The read path
replaces a connection found dead and runs the read once more; the engine behind `$match`
and the review API checks its connections out with a ping (SQLAlchemy `pool_pre_ping`).
"""

from __future__ import annotations

import psycopg
import pytest
import requests
from sqlalchemy.engine import make_url

from app.store.repository import Store
from app.web import create_app
from tests.support import search_data
from tests.support.served import serving
from tests.support.stores import open_config_data, reset_postgres

pytestmark = pytest.mark.postgres

MATCH = {
    "resourceType": "Parameters",
    "parameter": [{"name": "resource", "resource": {"resourceType": "Patient", "name": [{"family": "Mueller"}]}}],
}
REQUESTS = [
    ("GET", "/ImagingStudy?patient=alice&_include=ImagingStudy:patient", None),
    ("GET", "/Patient/bob", None),
    ("GET", "/ImagingStudy?_count=1&_total=accurate", None),
    ("POST", "/Patient/$match", MATCH),
]


def _terminate_others(url: str) -> int:
    """End every other session on the store's database, as an administrator would."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return sum(1 for (ended,) in rows if ended)


@pytest.fixture
def pg_store(postgres_url):
    reset_postgres(postgres_url)
    store = Store(postgres_url)
    search_data.load(store)
    store.close()
    return postgres_url


def test_requests_after_the_sessions_ended_succeed_in_process(pg_store, write_config):
    config = write_config(open_config_data(pg_store))
    store = Store.from_config(config)
    client = create_app(config, store).test_client()
    try:
        for _ in range(2):
            for method, path, body in REQUESTS:
                assert client.open(f"/fhir{path}", method=method, json=body).status_code == 200
            assert _terminate_others(pg_store) >= 1
        for method, path, body in REQUESTS:
            assert client.open(f"/fhir{path}", method=method, json=body).status_code == 200
    finally:
        store.close()


@pytest.mark.server
def test_no_worker_answers_500_after_its_sessions_ended(pg_store, tmp_path):
    """Two gunicorn workers, each with its connections open, lose them all at once."""
    statuses: list[int] = []
    with serving(open_config_data(pg_store), tmp_path, workers=2) as base:
        session = requests.Session()

        def send_all(rounds: int) -> None:
            for _ in range(rounds):
                for method, path, body in REQUESTS:
                    statuses.append(session.request(method, base + path, json=body, timeout=30).status_code)

        send_all(10)  # both workers serve some: each opens its connections
        for _ in range(3):
            assert _terminate_others(pg_store) >= 2
            session = requests.Session()  # new client connections, spread over the workers
            send_all(10)
    assert statuses.count(500) == 0, statuses
    assert set(statuses) == {200}
