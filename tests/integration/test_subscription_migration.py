"""Revision 0006 (topic-based Subscriptions) on a store full of data at revision 0005, on SQLite
and PostgreSQL: refused until `db upgrade`, which adds the `subscription`, `study_change` and
`subscription_event` tables and keeps every
row; the upgraded store then takes a Subscription. (The migrations making exactly the models'
schema is tests/integration/test_schema_migrations.py.)"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, text

from app.cli import main as cli
from app.store import schema
from app.store.audit_log import close_all as close_audit_logs
from app.store.repository import Store
from app.web import create_app
from tests.integration.test_subscriptions_api import subscription
from tests.support.full_store import KEPT, connected, fill, folder_source_config, set_version, snapshot


@pytest.mark.slow
def test_revision_0006_adds_subscriptions_and_keeps_every_row(empty_url, tmp_path, write_config):
    config = write_config(folder_source_config(empty_url, tmp_path / "archive"))
    path = str(config.path)
    fill(config, tmp_path / "archive")
    with connected(empty_url, write=True) as conn:  # as revision 0005 left it
        for table in ("subscription", "study_change", "subscription_event"):
            conn.execute(text(f"DROP TABLE {table}"))
    set_version(empty_url, "0005")
    before = snapshot(empty_url)
    assert all(before[table] for table in KEPT)

    refused = CliRunner().invoke(cli, ["sync", "--config", path])
    assert refused.exit_code == 2 and "revision 0005, behind this release's" in refused.output
    upgraded = CliRunner().invoke(cli, ["db", "upgrade", "--config", path])
    assert upgraded.exit_code == 0, upgraded.output
    with connected(empty_url) as conn:
        assert schema.version_of(conn).revision == schema.head() == "0006"
        found = inspect(conn)
        assert {c["name"] for c in found.get_columns("subscription")} >= {
            "id",
            "owner",
            "status",
            "events",
            "delivered",
        }
        assert {c["name"] for c in found.get_columns("study_change")} == {"id", "recorded", "kind", "study", "keys"}
        assert {c["name"] for c in found.get_columns("subscription_event")} == {
            "subscription",
            "number",
            "recorded",
            "kind",
            "study",
        }
        indexes = {i["name"]: tuple(i["column_names"]) for i in found.get_indexes("subscription")}
    assert indexes == {"ix_subscription_owner": ("owner", "id")}
    after = snapshot(empty_url)
    for table in ("subscription", "study_change", "subscription_event"):
        assert after.pop(table) == []
    assert after == before
    again = CliRunner().invoke(cli, ["db", "upgrade", "--config", path])
    assert again.exit_code == 0 and "up to date" in again.output

    store = Store.from_config(config)
    app = create_app(config, store)
    try:
        client = app.test_client()
        base = config.server.base_url
        made = client.post(
            "/fhir/Subscription",
            json=subscription(topic=f"{base}/SubscriptionTopic/imagingstudy-changed"),
            headers={"Content-Type": "application/fhir+json"},
        )
        assert made.status_code == 201, made.get_data(as_text=True)
        assert client.get(f"/fhir/Subscription/{made.get_json()['id']}").status_code == 200
    finally:
        app.extensions["imaging-facade-notify"].stop()
        close_audit_logs()
        store.close()
