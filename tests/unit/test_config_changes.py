"""Config keys for incremental sync: `changes: orthanc` with `rest_url`, and `max_results`."""

from __future__ import annotations

import pytest

from app.sources.dicomweb_settings import DicomwebSettings
from app.sources.dimse_settings import DimseSettings
from app.sources.orthanc_changes import OrthancChanges
from tests.support.configs import config_problems, load_text

EXAMPLE = """\
store: sqlite:///facade.db
sources:
  - name: main-pacs
    type: dicomweb
    url: http://127.0.0.1:8042/dicom-web
    changes: orthanc                 # follow Orthanc's /changes feed
    max_results: 100                 # Orthanc's LimitFindResults
    username: ${PACS_USER}
    password: ${PACS_PASSWORD}
  - name: old-pacs
    type: dimse
    host: 10.1.2.3
    called_aet: PACS
    max_results: 500
"""


def _dicomweb(**keys) -> str:
    keys = {"url": "http://pacs:8042/dicom-web", **keys}
    lines = ["store: sqlite:///facade.db", "sources:", "  - name: pacs", "    type: dicomweb"]
    lines += [f"    {key}: {value}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def test_example_loads_and_rest_url_defaults_to_the_url_without_dicom_web(tmp_path):
    web, dimse = load_text(tmp_path, EXAMPLE, {"PACS_USER": "facade", "PACS_PASSWORD": "pw"}).sources
    web, dimse = web.protocol, dimse.protocol
    assert (web.changes, web.rest_url, web.max_results) == ("orthanc", "http://127.0.0.1:8042", 100)
    assert isinstance(dimse, DimseSettings) and dimse.max_results == 500  # DIMSE follows no change feed


@pytest.mark.parametrize(
    "url, rest_url",
    [
        ("http://pacs:8042/dicom-web/", "http://pacs:8042"),
        ("https://pacs.example.org/orthanc/dicom-web", "https://pacs.example.org/orthanc"),
    ],
)
def test_rest_url_default_handles_a_trailing_slash_and_a_path(tmp_path, url, rest_url):
    (src,) = load_text(tmp_path, _dicomweb(url=url, changes="orthanc")).sources
    assert src.protocol.rest_url == rest_url


def test_an_explicit_rest_url_is_kept(tmp_path):
    (src,) = load_text(
        tmp_path, _dicomweb(url="http://pacs/wado", changes="orthanc", rest_url="http://pacs:8042/")
    ).sources
    assert (src.protocol.url, src.protocol.rest_url) == ("http://pacs/wado", "http://pacs:8042")


def test_defaults_leave_incremental_sync_off(tmp_path):
    (src,) = load_text(tmp_path, _dicomweb()).sources
    assert (src.protocol.changes, src.protocol.rest_url, src.protocol.max_results) == (None, None, None)


def test_dicomweb_settings_default_to_no_change_feed_and_no_limit():
    web = DicomwebSettings(url="http://pacs/dicom-web")
    assert (web.changes, web.rest_url, web.max_results) == (None, None, None)


@pytest.mark.parametrize(
    "text, key, reason",
    [
        (_dicomweb(url="http://pacs:8042/wado", changes="orthanc"), "rest_url", "does not end in /dicom-web"),
        (_dicomweb(changes="dcm4chee"), "changes", "must be 'orthanc'"),
        (_dicomweb(rest_url="http://pacs:8042"), "rest_url", "only used with changes: orthanc"),
        (_dicomweb(changes="orthanc", rest_url="ftp://pacs"), "rest_url", "URL"),
        (_dicomweb(max_results=0), "max_results", "greater than or equal to 1"),
        (_dicomweb(max_results="lots"), "max_results", "integer"),
        (
            "store: sqlite:///x.db\nsources: [{name: a, type: folder, path: x, max_results: 10}]\n",
            "max_results",
            "dicomweb and dimse",
        ),
        (
            "store: sqlite:///x.db\nsources: [{name: a, type: dimse, host: h, called_aet: P, changes: orthanc}]\n",
            "changes",
            "dicomweb source on Orthanc",
        ),
    ],
)
def test_errors_name_the_key_and_reason(tmp_path, text, key, reason):
    problems = config_problems(tmp_path, text)
    assert list(problems) == [f"sources[0].{key}"], problems
    assert reason in problems[f"sources[0].{key}"][0]


def test_change_feed_problems_come_with_the_others(tmp_path):
    text = "store: sqlite:///x.db\nsources: [{name: a, type: dicomweb, changes: orthanc, timezone: Nowhere}]\n"
    problems = config_problems(tmp_path, text)
    assert {"sources[0].url", "sources[0].timezone"} <= set(problems)


def test_the_change_feed_reader_is_built_from_the_config(tmp_path):
    (src,) = load_text(
        tmp_path,
        _dicomweb(changes="orthanc", username="'${U}'", password="'${P}'", timeout=5),
        {"U": "facade", "P": "s3cret"},
    ).sources
    feed = src.open().change_feed
    assert isinstance(feed, OrthancChanges)
    assert (feed.name, feed.url, feed.timeout) == ("pacs", "http://pacs:8042", 5.0)
    assert feed.session.auth == ("facade", "s3cret")
    (plain,) = load_text(tmp_path, _dicomweb()).sources
    assert plain.open().change_feed is None  # no changes: orthanc, no feed
