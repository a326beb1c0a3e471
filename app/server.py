"""gunicorn as the WSGI server: one app per worker process, built after the fork."""

from __future__ import annotations

import logging
import os
import re
import signal
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication
from gunicorn.config import KNOWN_SETTINGS
from gunicorn.glogging import Logger

from app.logs import gunicorn_logconfig
from app.logsafe import describe

if TYPE_CHECKING:
    from flask import Flask

    from app.config import Config, TlsSettings

log = logging.getLogger(__name__)
#: how gunicorn (workers/base.py `handle_error`) starts its line about a request it could not parse
_INVALID_REQUEST = "Invalid request from ip="
#: what names the kind of parse error: plain words before the colon that precedes the quoted input
_ERROR_KIND = re.compile(r"[A-Za-z][A-Za-z ]{0,60}")


class RequestContentFilter(logging.Filter):
    """Keeps what a client sent out of gunicorn's error log.

    gunicorn quotes the offending input when it refuses a request (`Invalid HTTP Version:
    '<id> HTTP/1.1'` for a request line with an unencoded space before a patient id), names
    the URI when an application error escapes, and logs tracebacks whose messages may quote
    data. Each becomes a line with the client address and the kind of error only.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_INVALID_REQUEST):
            address, _, error = message[len(_INVALID_REQUEST) :].partition(": ")
            kind = error.partition(":")[0].strip()
            if not _ERROR_KIND.fullmatch(kind):
                kind = "malformed request"
            message = f"{_INVALID_REQUEST}{address}: {kind} (the request's content is not logged)"
        elif message.startswith("Error handling request"):
            message = "Error handling request"
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message}: {describe(record.exc_info[1])}"
            record.exc_info, record.exc_text = None, None
        record.msg, record.args = message, ()
        return True


class PrivateLogger(Logger):
    """gunicorn's logger with `RequestContentFilter` on its error log (set up again on reload)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        if not any(isinstance(f, RequestContentFilter) for f in self.error_log.filters):
            self.error_log.addFilter(RequestContentFilter())


class FacadeServer(BaseApplication):
    def __init__(self, config: Config, options: dict[str, Any]):
        self._config = config
        self._options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        from app.web import create_app

        return create_app(self._config)


def gunicorn_options(config: Config, host: str, port: int, workers: int) -> dict[str, Any]:
    options: dict[str, Any] = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "sync",
        "timeout": 60,
        "graceful_timeout": 20,
        # no access log: request lines carry patient ids in search parameters
        "accesslog": None,
        "errorlog": "-",
        "loglevel": config.logging.level.lower(),
        "logger_class": PrivateLogger,
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
    }
    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        # gunicorn 25.1+ opens a control socket at one path per user ($XDG_RUNTIME_DIR or
        # ~/.gunicorn/gunicorn.ctl): a second server on the host would take it over and either
        # one's exit remove it. Nothing here uses `gunicornc`, so no server opens one.
        options["control_socket_disable"] = True
    when_ready: list[Callable[[Any], None]] = []
    if config.metrics.port is not None:
        when_ready.append(_serve_metrics_from_the_arbiter(config, options))
    if config.server.tls is not None:
        when_ready.append(_serve_https(config.server.tls, options))
    if when_ready:
        options["when_ready"] = lambda arbiter: [ready(arbiter) for ready in when_ready]
    if config.logging.format == "json":
        options["logconfig_dict"] = gunicorn_logconfig(config.logging)
    return options


def run_gunicorn(config: Config, host: str, port: int, workers: int) -> None:
    FacadeServer(config, gunicorn_options(config, host, port, workers)).run()


def _serve_metrics_from_the_arbiter(config: Config, options: dict[str, Any]) -> Callable[[Any], None]:
    """Prometheus scrapes gunicorn's arbiter, which outlives its workers and adds up what each
    counted (app/metrics.py); a worker's gauges leave with it."""
    from prometheus_client import multiprocess

    from app.metrics import serve_metrics

    options["child_exit"] = lambda _arbiter, worker: multiprocess.mark_process_dead(worker.pid)
    return lambda _arbiter: serve_metrics(config)


def _serve_https(tls: TlsSettings, options: dict[str, Any]) -> Callable[[Any], None]:
    """HTTPS from the server itself: TLS 1.2 or later only (RFC 8996 retired 1.0 and 1.1; BSI
    TR-02102-2 and NIST SP 800-52r2 ask for 1.2+), with the certificate a renewal replaces in
    place picked up without dropping a request: the arbiter watches the files and, when they
    change, reloads gracefully (SIGHUP: new workers load the new pair and take new connections
    on the same socket while the old ones finish the requests they hold)."""
    options["certfile"], options["keyfile"] = str(tls.certfile), str(tls.keyfile)
    options["ssl_context"] = _tls_12_or_later
    return lambda _arbiter: _watch_certificate(tls)


def _tls_12_or_later(_config: Any, default_context: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    context = default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _watch_certificate(tls: TlsSettings) -> None:
    def stamp() -> tuple[float, float] | None:
        try:
            return (tls.certfile.stat().st_mtime, tls.keyfile.stat().st_mtime)
        except OSError:
            return None

    def watch() -> None:
        seen = stamp()
        while True:
            time.sleep(tls.reload_check)
            now = stamp()
            if now is None or now == seen:
                continue  # a renewal tool may remove and write the files: wait until both are there
            time.sleep(1.0)  # a renewal writes the certificate and the key one after the other
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls.certfile, tls.keyfile)
            except (OSError, ssl.SSLError) as exc:
                log.error(
                    "server.tls: the renewed certificate and key do not load (%s); still serving the old ones",
                    describe(exc),
                )
                seen = now
                continue
            seen = stamp()
            log.info("server.tls: the certificate changed; reloading the workers gracefully")
            os.kill(os.getpid(), signal.SIGHUP)

    threading.Thread(target=watch, name="tls-certificate-watch", daemon=True).start()
