"""Structured logs (`logging.format: json`) and request ids: what an operator's log pipeline and
an EHR's support desk rely on. The served process's own log is tested in
tests/security/test_served.py (every line one JSON object, nothing personal)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from app.logs import REQUEST_ID, JsonFormatter, LogSettings, RequestIdFilter, request_id_from
from tests.support.configs import config_problems, load_text


def test_plain_lines_at_info_unless_configured(tmp_path):
    assert load_text(tmp_path, "store: sqlite:///facade.db\n").logging == LogSettings("text", "INFO")
    config = load_text(tmp_path, "store: sqlite:///facade.db\nlogging: {format: json, level: WARNING}\n")
    assert config.logging == LogSettings("json", "WARNING")


@pytest.mark.parametrize(
    "section, key",
    [("{format: xml}", "logging.format"), ("{level: chatty}", "logging.level"), ("{colour: red}", "logging.colour")],
)
def test_a_bad_logging_key_is_named(tmp_path, section, key):
    assert key in config_problems(tmp_path, f"store: sqlite:///facade.db\nlogging: {section}\n")


def _logged(extra: dict | None = None, request_id: str | None = None) -> dict:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("imaging_facade.test_logs")
    logger.addHandler(handler)
    token = REQUEST_ID.set(request_id)
    try:
        logger.warning("source %s is lagging", "pacs-east", extra=extra)
    finally:
        REQUEST_ID.reset(token)
        logger.removeHandler(handler)
    (line,) = out.getvalue().splitlines()
    return json.loads(line)


def test_a_json_record_is_one_line_with_time_level_logger_event_and_request_id():
    record = _logged({"status": 200, "duration_ms": 1.5}, request_id="ehr-1")
    assert list(record)[:5] == ["time", "level", "logger", "event", "request_id"]
    assert record["level"] == "WARNING" and record["logger"] == "imaging_facade.test_logs"
    assert record["event"] == "source pacs-east is lagging"
    assert record["request_id"] == "ehr-1"
    assert record["time"].endswith("+00:00")
    assert record["status"] == 200 and record["duration_ms"] == 1.5
    assert _logged()["request_id"] is None  # logged outside any request


@pytest.mark.parametrize(
    "header, kept",
    [
        ("ehr-7f3a", True),
        ("4bf92f3577b34da6a3ce929d0e0e4736", True),
        ("", False),
        (None, False),
        ("two words", False),
        ("line\nbreak", False),
        ("x" * 129, False),
        ('{"json": 1}', False),
    ],
)
def test_a_callers_request_id_is_kept_only_when_it_is_a_sane_token(header, kept):
    made = request_id_from(header)
    assert (made == header) is kept
    if not kept:
        assert len(made) == 32 and made.isalnum()


def test_every_answer_carries_its_request_id_and_one_log_line_without_its_content(open_config, caplog):
    from app.web import create_app

    client = create_app(open_config()).test_client()
    caplog.set_level(logging.INFO, logger="imaging_facade.request")
    sent = client.get("/fhir/Patient?name=Zebedee", headers={"X-Request-ID": "ehr-42"})
    assert sent.status_code == 200 and sent.headers["X-Request-ID"] == "ehr-42"
    made = client.get("/fhir/Patient/nope")
    assert made.status_code == 404 and len(made.headers["X-Request-ID"]) == 32
    bad = client.get("/fhir/Patient?birthdate=not-a-date")
    assert bad.status_code == 400 and bad.headers["X-Request-ID"]
    lines = [r for r in caplog.records if r.name == "imaging_facade.request"]
    assert lines[0].getMessage() == "GET /fhir/<rtype> 200"
    assert [r.status for r in lines] == [200, 404, 400]
    assert [r.route for r in lines] == ["/fhir/<rtype>", "/fhir/<rtype>/<rid>", "/fhir/<rtype>"]
    assert all(r.duration_ms >= 0 for r in lines)
    assert not any("Zebedee" in r.getMessage() or "nope" in r.getMessage() for r in lines)
