"""The `concurrency` key of dicomweb and dimse sources: studies read at once (default 4)."""

from __future__ import annotations

import pytest

from app.sources.dicomweb_settings import DEFAULT_CONCURRENCY, MAX_CONCURRENCY
from tests.support.configs import config_problems, load_text

DICOMWEB = "{name: web, type: dicomweb, url: 'http://pacs:8042/dicom-web'"
DIMSE = "{name: old, type: dimse, host: pacs, called_aet: PACS"
FOLDER = "{name: files, type: folder, path: ."


def _config(source: str, **keys) -> str:
    more = "".join(f", {key}: {value}" for key, value in keys.items())
    return f"store: sqlite:///facade.db\nsources: [{source}{more}}}]\n"


@pytest.mark.parametrize("source", [DICOMWEB, DIMSE])
def test_four_studies_at_once_by_default(tmp_path, source):
    (src,) = load_text(tmp_path, _config(source)).sources
    assert DEFAULT_CONCURRENCY == 4
    assert src.protocol.concurrency == 4
    assert src.open().concurrency == 4  # the source reads as the settings say


@pytest.mark.parametrize("source", [DICOMWEB, DIMSE])
@pytest.mark.parametrize("value", [1, 8, MAX_CONCURRENCY])
def test_the_configured_concurrency_reaches_the_source(tmp_path, source, value):
    (src,) = load_text(tmp_path, _config(source, concurrency=value)).sources
    assert src.protocol.concurrency == value
    assert src.open().concurrency == value


@pytest.mark.parametrize("source", [DICOMWEB, DIMSE])
@pytest.mark.parametrize(
    "value, reason",
    [
        (0, "greater than or equal to 1"),
        (-2, "greater than or equal to 1"),
        (MAX_CONCURRENCY + 1, f"less than or equal to {MAX_CONCURRENCY}"),
        ("lots", "integer"),
        ("true", "integer"),
    ],
)
def test_a_bad_concurrency_is_refused_naming_the_key(tmp_path, source, value, reason):
    problems = config_problems(tmp_path, _config(source, concurrency=value))
    assert list(problems) == ["sources[0].concurrency"], problems
    assert reason in problems["sources[0].concurrency"][0]


def test_a_folder_source_refuses_concurrency(tmp_path):
    problems = config_problems(tmp_path, _config(FOLDER, concurrency=4))
    assert list(problems) == ["sources[0].concurrency"], problems
    assert "dicomweb and dimse" in problems["sources[0].concurrency"][0]
