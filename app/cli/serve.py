"""`imaging-facade serve`: the FHIR API under gunicorn, with an optional watcher beside it."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile

import click

from app.cli.common import config_option, fail, load, open_store, say
from app.cli.sync import sync_with_progress
from app.config import Config

log = logging.getLogger(__name__)


def _with_bind(config: Config, host: str, port: int) -> Config:
    """Links follow a --host/--port override when base_url named the configured address."""
    from dataclasses import replace
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(config.server.base_url)
    if parts.netloc != f"{config.server.host}:{config.server.port}" or (host, port) == (
        config.server.host,
        config.server.port,
    ):
        return config
    base_url = urlunsplit(parts._replace(netloc=f"{host}:{port}"))
    return replace(config, server=replace(config.server, base_url=base_url, host=host, port=port))


@click.command()
@config_option
@click.option("--host", default=None, help="address to bind (default: server.host)")
@click.option("--port", default=None, type=int, help="port (default: server.port)")
@click.option("--workers", default=None, type=int, help="gunicorn worker processes (default: server.workers)")
def serve(config_path: str | None, host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the FHIR API at http://HOST:PORT/fhir with gunicorn."""
    config = load(config_path)
    metrics_directory = _count_across_processes() if config.metrics.port is not None else None

    from app.security import OpenModeRefused, check_open_mode
    from app.server import run_gunicorn

    host = host or config.server.host
    port = port or config.server.port
    workers = workers or config.server.workers
    config = _with_bind(config, host, port)
    try:
        warning = check_open_mode(config, host)
    except OpenModeRefused as exc:
        fail(str(exc))
    if warning:
        log.warning(warning)
    store = open_store(config)  # a new store is made, one behind or ahead refused, before workers fork
    store.settings.paging_secret()
    if config.server.sync_on_start:
        for src in config.sources:
            sync_with_progress(store, src)
    store.close()
    say(f"serving FHIR R4 at http://{host}:{port}/fhir (base URL in links: {config.server.base_url})")
    watcher = _start_watcher(config) if config.server.watch and config.sources else None
    try:
        run_gunicorn(config, host, port, workers)
    finally:
        if watcher is not None:
            watcher.terminate()  # SIGTERM: it finishes the study in hand
            watcher.wait(timeout=60)
        if metrics_directory is not None:
            shutil.rmtree(metrics_directory, ignore_errors=True)


def _count_across_processes() -> str:
    """A directory of this server's own for prometheus_client's multiprocess mode, named in the
    environment before prometheus_client is first imported (it reads it then), so that the
    workers, the watcher and this process count into it and a scrape adds them up."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess directory was set")
    directory = tempfile.mkdtemp(prefix="imaging-facade-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory  # app/metrics.py MULTIPROC_ENV
    return directory


def _start_watcher(config: Config) -> subprocess.Popen:
    """`sync --watch` as a child process: the API workers never wait for an archive."""
    say("server.watch: syncing continuously in a child process")
    return subprocess.Popen([sys.executable, "-m", "app.cli", "sync", "--watch", "--config", str(config.path)])
