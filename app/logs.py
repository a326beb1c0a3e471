"""How the server logs: plain lines for a terminal, or one JSON object per line for a log pipeline.

A hospital's operations team searches logs by request: each request gets an id (the caller's
`X-Request-ID` when it sends a sane one, as load balancers and API gateways do; else a new one),
every line logged while serving it carries that id, and the answer returns it. Neither format
ever carries request content: what a line holds is chosen where it is logged (app/logsafe.py
describes exceptions without their messages; the request line names the route, not the URL).
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.orjson import OrjsonFormatter as LibraryJsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: the id of the request being served in this thread (Flask serves one request per thread)
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
#: what an id taken from a caller may look like: short, printable, nothing a log parser splits on
_SANE_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


@dataclass(frozen=True)
class LogSettings:
    """The `logging` section of the config."""

    format: str = "text"
    level: str = "INFO"


def request_id_from(header: str | None) -> str:
    """The caller's id when it is a sane token, else a new one (a header is not trusted to be
    short or printable: it is written into every log line of the request)."""
    if header and _SANE_ID.match(header):
        return header
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Adds the id of the request being served (or None) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(LibraryJsonFormatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, event, request_id, then
    the fields a caller passed in `extra` (e.g. status and duration_ms of a request).

    The library writes the object (with orjson) and adds a traceback or stack as `exc_info` and
    `stack_info`; the fields are gathered here in one pass, since a server logs a line for every
    request and the library's general field handling cost about as much as the rest of it."""

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["event"] = record.message
        log_data["request_id"] = getattr(record, "request_id", None)
        log_data["process"] = record.process
        log_data.update(message_dict)
        for key, value in record.__dict__.items():
            if key not in _RESERVED:
                log_data[key] = value


#: the attributes every LogRecord has, and ours, which are not `extra` fields
_RESERVED = frozenset(
    [*vars(logging.LogRecord("", 0, "", 0, "", (), None)), "message", "asctime", "taskName", "request_id"]
)


def formatter(settings: LogSettings) -> logging.Formatter:
    return JsonFormatter() if settings.format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(settings: LogSettings) -> None:
    """Log every logger's records to stderr in the configured format, from the configured level.

    The command line starts with plain lines at INFO (`logging.basicConfig`); the config may ask
    for another format or level once it is read. Only the plain stderr handler is changed, so
    handlers that others put on the root logger (a test runner's) stay as they are.
    """
    root = logging.getLogger()
    root.setLevel(settings.level)
    handlers = [h for h in root.handlers if type(h) is logging.StreamHandler]
    if not handlers:
        handlers = [logging.StreamHandler(sys.stderr)]
        root.addHandler(handlers[0])
    for handler in handlers:
        handler.setFormatter(formatter(settings))
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())


def gunicorn_logconfig(settings: LogSettings) -> dict[str, Any]:
    """gunicorn's own logger (`gunicorn.error`: workers starting, timeouts) in the same format,
    through its `logconfig_dict` setting, which replaces its handlers in each process."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"facade": {"()": formatter, "settings": settings}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "facade",
                "filters": ["request_id"],
            }
        },
        "root": {"level": settings.level, "handlers": ["stderr"]},
        "loggers": {"gunicorn.error": {"level": settings.level, "handlers": ["stderr"], "propagate": False}},
    }
