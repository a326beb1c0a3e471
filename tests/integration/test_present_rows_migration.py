"""Revision 0004 (presence rows of references given as a name alone) on a store full of data at
revision 0003, on SQLite and PostgreSQL: refused until `db upgrade`, which writes for every
stored study the rows this release writes when it stores one, keeps every other row, and makes
`referrer:missing`, `interpreter:missing` and `performer:missing` answer as on a new store."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from app.cli import main as cli
from app.store.audit_log import close_all as close_audit_logs
from app.store.repository import Store
from app.web import create_app
from tests.support.full_store import connected, fill, folder_source_config, set_version, snapshot

PRESENT_ROWS = "SELECT rtype, rid, param, norm, value FROM idx_string WHERE param LIKE :like"
LIKE = {"like": "%:present"}
NAMES = ("referrer", "interpreter", "performer")


def _present_rows(url: str) -> list[tuple]:
    with connected(url) as conn:
        return sorted(map(tuple, conn.execute(text(PRESENT_ROWS), LIKE)))


def _answers(config, store_url: str) -> dict[str, set[str]]:
    """The ids each `:missing` search of the three finds (their audit events stored by the end)."""
    store = Store.from_config(config)
    try:
        client = create_app(config, store).test_client()
        found = {}
        for name in NAMES:
            for missing in ("true", "false"):
                bundle = client.get(f"/fhir/ImagingStudy?{name}:missing={missing}&_count=100").get_json()
                found[f"{name}:missing={missing}"] = {e["resource"]["id"] for e in bundle.get("entry", [])}
        return found
    finally:
        close_audit_logs()
        store.close()


@pytest.mark.slow
def test_revision_0004_indexes_names_alone_of_every_stored_study(empty_url, tmp_path, write_config):
    config = write_config(folder_source_config(empty_url, tmp_path / "archive"))
    path = str(config.path)
    fill(config, tmp_path / "archive")
    written = _present_rows(empty_url)  # as this release writes them when it stores a study
    assert {param for _, _, param, _, _ in written} >= {"interpreter:present", "performer:present"}
    answers = _answers(config, empty_url)
    assert answers["performer:missing=false"] and answers["performer:missing=true"]
    with connected(empty_url, write=True) as conn:  # as revision 0003 left it: no presence rows
        conn.execute(text("DELETE FROM idx_string WHERE param LIKE :like"), LIKE)
    set_version(empty_url, "0003")
    before = snapshot(empty_url)

    refused = CliRunner().invoke(cli, ["sync", "--config", path])
    assert refused.exit_code == 2 and "revision 0003, behind this release's" in refused.output
    upgraded = CliRunner().invoke(cli, ["db", "upgrade", "--config", path])
    assert upgraded.exit_code == 0, upgraded.output
    assert _present_rows(empty_url) == written
    after = snapshot(empty_url)
    drop_present = lambda rows: [r for r in rows if not str(r[3]).endswith(":present")]  # noqa: E731
    assert drop_present(after.pop("idx_string")) == drop_present(before.pop("idx_string"))
    assert after == before  # every other row kept
    assert _answers(config, empty_url) == answers
