"""The `export` section (Bulk Data export): its defaults, where the files go, and a bad value
stopping the command with the key named, never a traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from app.cli import main
from tests.support.configs import config_problems, load_text


def test_the_export_section_with_its_defaults(tmp_path):
    export = load_text(tmp_path, "store: sqlite:///data/facade.db\n").export
    assert export is not None
    assert export.directory == (tmp_path / "data" / "facade.db.export").resolve()  # beside the store's file
    assert (export.retention, export.max_file_resources, export.page_size) == (86400, 100_000, 1000)
    assert (export.retry_after, export.lease, export.max_jobs_per_client) == (2, 30.0, 5)


def test_a_relative_directory_is_read_from_the_config_folder(tmp_path):
    text = "store: postgresql+psycopg://facade@db/facade\nexport: {directory: out/exports, retention: 600}\n"
    export = load_text(tmp_path, text).export
    assert export is not None and export.directory == (tmp_path / "out" / "exports").resolve()
    assert export.retention == 600
    pg = load_text(tmp_path, "store: postgresql+psycopg://facade@db/facade\n").export
    assert pg is not None and pg.directory == tmp_path.resolve() / ".export"  # no store file to sit beside


@pytest.mark.parametrize(
    "section, key, reason",
    [
        ("{retention: 5}", "export.retention", "greater than or equal to 60"),
        ("{max_file_resources: 0}", "export.max_file_resources", "greater than or equal to 1"),
        ("{page_size: many}", "export.page_size", "Not a valid integer"),
        ("{lease: 1}", "export.lease", "greater than or equal to 2"),
        ("{directory: ''}", "export.directory", "Shorter than minimum length"),
        ("{retension: 600}", "export.retension", "Unknown field"),
    ],
)
def test_a_bad_export_section_names_its_key(tmp_path, section, key, reason):
    problems = config_problems(tmp_path, f"store: sqlite:///facade.db\nexport: {section}\n")
    assert key in problems and any(reason in p for p in problems[key]), problems


def test_check_config_stops_naming_the_key(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("store: sqlite:///facade.db\nexport: {retention: 5}\n")
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "export.retention" in result.output + (result.stderr or "")
