"""A `dimse` source in the config: a typical entry loads as written; errors name the key."""

from __future__ import annotations

import pytest

from app.sources.dimse_settings import DimseSettings
from tests.support.configs import config_problems, load_text

DIMSE_EXAMPLE = """\
store: sqlite:///facade.db
sources:
  - name: old-pacs
    type: dimse
    host: 10.1.2.3
    port: 104
    called_aet: PACS        # the archive's AE title
    calling_aet: FACADE     # ours (a default is fine)
    timezone: America/Chicago
"""


def _source(**keys) -> str:
    lines = ["store: sqlite:///facade.db", "sources:", "  - name: old-pacs", "    type: dimse"]
    lines += [f"    {key}: {value}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def test_the_dimse_example_loads_as_written(tmp_path):
    (src,) = load_text(tmp_path, DIMSE_EXAMPLE).sources
    dimse = src.protocol
    assert (src.name, src.type, dimse.host, dimse.port) == ("old-pacs", "dimse", "10.1.2.3", 104)
    assert (dimse.called_aet, dimse.calling_aet) == ("PACS", "FACADE")
    assert src.timezone == "America/Chicago"
    assert dimse.timeout == 30.0
    assert src.wado_url is None and isinstance(dimse, DimseSettings)  # no url, no path


def test_defaults_port_104_and_calling_aet_facade(tmp_path):
    (src,) = load_text(tmp_path, _source(host="pacs.example.org", called_aet="PACS")).sources
    assert (src.protocol.port, src.protocol.calling_aet) == (104, "FACADE")
    assert src.timezone == "UTC"  # the server default


def test_ae_titles_are_stripped_of_insignificant_spaces(tmp_path):
    (src,) = load_text(tmp_path, _source(host="h", called_aet='" PACS "', calling_aet="'US  '")).sources
    assert (src.protocol.called_aet, src.protocol.calling_aet) == ("PACS", "US")


def test_dimse_settings_default_port_104_and_calling_aet_facade():
    dimse = DimseSettings(host="h", called_aet="PACS")
    assert (dimse.host, dimse.port, dimse.called_aet, dimse.calling_aet) == ("h", 104, "PACS", "FACADE")


@pytest.mark.parametrize(
    "keys, missing",
    [
        ({"called_aet": "PACS"}, {"host"}),
        ({"host": "10.1.2.3"}, {"called_aet"}),
        ({}, {"host", "called_aet"}),
    ],
)
def test_missing_host_or_called_aet_names_the_key(tmp_path, keys, missing):
    problems = config_problems(tmp_path, _source(**keys))
    assert set(problems) == {f"sources[0].{key}" for key in missing}
    for key in missing:
        assert "dimse source needs" in problems[f"sources[0].{key}"][0]


@pytest.mark.parametrize("key", ["called_aet", "calling_aet"])
@pytest.mark.parametrize(
    "value, reason",
    [
        ('"A2345678901234567"', "at most 16"),
        ('"   "', "not only spaces"),
        ('""', "not only spaces"),
        ('"PA\\\\CS"', "backslash"),
        ('"PA\\tCS"', "control"),
        ('"PA\\nCS"', "control"),
    ],
)
def test_bad_ae_titles_name_the_key(tmp_path, key, value, reason):
    keys = {"host": "10.1.2.3", "called_aet": "PACS", key: value}
    problems = config_problems(tmp_path, _source(**keys))
    assert list(problems) == [f"sources[0].{key}"]
    assert reason in problems[f"sources[0].{key}"][0]


def test_a_sixteen_character_ae_title_is_fine(tmp_path):
    (src,) = load_text(tmp_path, _source(host="h", called_aet="A234567890123456")).sources
    assert src.protocol.called_aet == "A234567890123456"


@pytest.mark.parametrize("port", [0, 65536, -1, '"abc"'])
def test_bad_port_names_the_key(tmp_path, port):
    problems = config_problems(tmp_path, _source(host="h", called_aet="PACS", port=port))
    assert list(problems) == ["sources[0].port"]


def test_empty_host_names_the_key(tmp_path):
    problems = config_problems(tmp_path, _source(host='""', called_aet="PACS"))
    assert list(problems) == ["sources[0].host"]


def test_unknown_type_still_refused(tmp_path):
    problems = config_problems(tmp_path, _source(host="h", called_aet="PACS").replace("type: dimse", "type: dimsex"))
    assert "sources[0].type" in problems
