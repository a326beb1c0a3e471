"""The config schema: the README's example works as written; every error names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigError, load_config
from tests.support.configs import config_problems

README_EXAMPLE = """\
store: sqlite:///data/facade.db        # or postgresql+psycopg://user@host/db
server: {base_url: http://127.0.0.1:8080/fhir}
sources:
  - name: sample
    type: folder
    path: ./sample-archive
  - name: main-pacs
    type: dicomweb
    url: http://127.0.0.1:8042/dicom-web
    timezone: Europe/Berlin            # zone of the archive's local DICOM times
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_readme_example_loads_as_written(tmp_path):
    config = load_config(_write(tmp_path, README_EXAMPLE), environ={})
    assert config.store == f"sqlite:///{(tmp_path / 'data/facade.db').resolve()}"
    assert config.server.base_url == "http://127.0.0.1:8080/fhir"
    sample, pacs = config.sources
    assert (sample.type, sample.protocol.path) == ("folder", (tmp_path / "sample-archive").resolve())
    assert sample.timezone == "UTC"  # the documented server default
    assert (pacs.type, pacs.protocol.url, pacs.timezone) == (
        "dicomweb",
        "http://127.0.0.1:8042/dicom-web",
        "Europe/Berlin",
    )
    assert pacs.wado_url == pacs.protocol.url
    assert config.security.open is False  # secure unless the file says otherwise


def test_default_location_comes_from_environment(tmp_path):
    path = _write(tmp_path, README_EXAMPLE)
    assert load_config(None, environ={"IMAGING_FACADE_CONFIG": str(path)}).path == path.resolve()


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml", environ={})


@pytest.mark.parametrize(
    "text, key, reason",
    [
        ("store: mysql://db\n", "store", "sqlite:/// or postgresql"),
        ("sources: []\n", "store", "Missing data"),
        ("store: sqlite:///x.db\nserver: {port: 70000}\n", "server.port", "65535"),
        ("store: sqlite:///x.db\nserver: {colour: blue}\n", "server.colour", "Unknown field"),
        ("store: sqlite:///x.db\nserver: {trusted_proxies: -1}\n", "server.trusted_proxies", "greater than"),
        ("store: sqlite:///x.db\ntimezone: Mars/Olympus\n", "timezone", "unknown time zone"),
        ("store: sqlite:///x.db\nsources: [{name: a, type: ftp}]\n", "sources[0].type", "folder, dicomweb"),
        ("store: sqlite:///x.db\nsources: [{name: 'a b', type: folder, path: x}]\n", "sources[0].name", "Endpoint"),
        ("store: sqlite:///x.db\nsources: [{name: a, type: folder}]\n", "sources[0].path", "needs a path"),
        ("store: sqlite:///x.db\nsources: [{name: a, type: dicomweb}]\n", "sources[0].url", "needs a url"),
        ("store: sqlite:///x.db\nsources: [{name: a, type: dicomweb, url: 'ftp://x'}]\n", "sources[0].url", "URL"),
        (
            "store: sqlite:///x.db\nsources: [{name: a, type: folder, path: x, timezone: Nowhere}]\n",
            "sources[0].timezone",
            "unknown time zone",
        ),
        (
            "store: sqlite:///x.db\nsources: [{name: a, type: folder, path: x}, {name: a, type: folder, path: y}]\n",
            "sources",
            "unique",
        ),
        ("store: [1, 2\n", "(file)", "not valid YAML"),
        ("- just a list\n", "(file)", "mapping"),
    ],
)
def test_errors_name_the_key_and_reason(tmp_path, text, key, reason):
    problems = config_problems(tmp_path, text)
    assert key in problems, problems
    assert any(reason in r for r in problems[key]), problems[key]


def test_all_problems_reported_at_once(tmp_path):
    problems = config_problems(tmp_path, "store: nope\nserver: {port: 0}\nsources: [{name: a, type: x}]\n")
    assert {"store", "server.port", "sources[0].type"} <= set(problems)


def test_secrets_must_be_environment_references(tmp_path):
    text = (
        "store: sqlite:///x.db\nsources:\n  - {name: pacs, type: dicomweb, url: 'http://h/dw', "
        "username: u, password: hunter2}\n"
    )
    problems = config_problems(tmp_path, text)
    assert "environment variable" in problems["sources[0].password"][0]
    assert "hunter2" not in str(problems)


def test_secret_references_are_resolved(tmp_path):
    text = (
        "store: sqlite:///x.db\nsources:\n  - {name: pacs, type: dicomweb, url: 'http://h/dw', "
        "username: '${PACS_USER}', password: '${PACS_PASSWORD}'}\n"
    )
    config = load_config(_write(tmp_path, text), environ={"PACS_USER": "facade", "PACS_PASSWORD": "s3cret"})
    assert (config.sources[0].protocol.username, config.sources[0].protocol.password) == ("facade", "s3cret")


def test_unset_secret_variable_is_named(tmp_path):
    text = (
        "store: sqlite:///x.db\nsources:\n  - {name: pacs, type: dicomweb, url: 'http://h/dw', "
        "token: '${PACS_TOKEN}'}\n"
    )
    problems = config_problems(tmp_path, text)
    assert problems["sources[0].token"] == ["environment variable PACS_TOKEN is not set"]


def test_postgres_url_and_absolute_paths_kept(tmp_path):
    text = "store: postgresql+psycopg://facade@db.example/facade\nsources: [{name: a, type: folder, path: /srv/x}]\n"
    config = load_config(_write(tmp_path, text), environ={})
    assert config.store == "postgresql+psycopg://facade@db.example/facade"
    assert config.sources[0].protocol.path == Path("/srv/x")


def test_database_password_must_be_a_reference(tmp_path):
    problems = config_problems(tmp_path, "store: postgresql+psycopg://facade:hunter2@db/facade\n")
    assert "database password" in problems["store"][0]
    assert "hunter2" not in str(problems)


def test_references_inside_a_value_are_resolved(tmp_path):
    text = "store: 'postgresql+psycopg://facade:${PGPASSWORD}@${PGHOST}/facade'\n"
    config = load_config(_write(tmp_path, text), environ={"PGPASSWORD": "s3cret", "PGHOST": "db.example"})
    assert config.store == "postgresql+psycopg://facade:s3cret@db.example/facade"
    problems = config_problems(tmp_path, text, environ={"PGPASSWORD": "s3cret"})
    assert problems["store"] == ["environment variable PGHOST is not set"]


def test_user_without_password_is_fine(tmp_path):
    config = load_config(_write(tmp_path, "store: postgresql+psycopg://postgres@127.0.0.1:5432/test\n"), environ={})
    assert config.store == "postgresql+psycopg://postgres@127.0.0.1:5432/test"
