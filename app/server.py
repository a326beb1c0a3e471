"""gunicorn as the WSGI server: one app per worker process, built after the fork."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication

from app.logs import gunicorn_logconfig

if TYPE_CHECKING:
    from flask import Flask

    from app.config import Config


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


def run_gunicorn(config: Config, host: str, port: int, workers: int) -> None:
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": "sync",
        "timeout": 60,
        "graceful_timeout": 20,
        # no access log: request lines carry patient ids in search parameters
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
    }
    if config.metrics.port is not None:
        _serve_metrics_from_the_arbiter(config, options)
    if config.logging.format == "json":
        options["logconfig_dict"] = gunicorn_logconfig(config.logging)
    options["loglevel"] = config.logging.level.lower()
    FacadeServer(config, options).run()


def _serve_metrics_from_the_arbiter(config: Config, options: dict[str, Any]) -> None:
    """Prometheus scrapes gunicorn's arbiter, which outlives its workers and adds up what each
    counted (app/metrics.py); a worker's gauges leave with it."""
    from prometheus_client import multiprocess

    from app.metrics import serve_metrics

    options["when_ready"] = lambda _arbiter: serve_metrics(config)
    options["child_exit"] = lambda _arbiter, worker: multiprocess.mark_process_dead(worker.pid)
