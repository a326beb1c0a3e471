"""`imaging-facade worker`: a Celery worker that reads and stores the studies a distributed sync
(`sync --distributed`) hands out, and runs the Bulk Data export jobs the API nodes hand out
(app/export/tasks.py), on any host that reaches the broker, the archives, the PostgreSQL store
and the export folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import click

from app.cli.common import config_option, load, open_store, task_queue

if TYPE_CHECKING:
    from app.config import Config
    from app.export.worker import ExportWorker
    from app.store.repository import Store


@click.command()
@config_option
@click.option(
    "--concurrency",
    type=click.IntRange(1, 8),
    default=2,
    show_default=True,
    # each task holds one of the store's connections (at most 10) while its batch waits its turn
    help="tasks run at once (threads); each reads its source's `concurrency` studies at once",
)
def worker(config_path: str | None, concurrency: int) -> None:
    """Run a worker of distributed syncs and Bulk Data exports until SIGTERM (the tasks in hand
    are finished first)."""
    config = load(config_path)
    app, _ = task_queue(config, "worker")
    store = open_store(config)

    from app.export.tasks import serve_export
    from app.sync.distributed.tasks import serve_tasks
    from app.sync.distributed.work import Worker

    serve_tasks(app, Worker(store, config.sources))
    exports = _export_worker(config, store)
    serve_export(app, exports)
    try:
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={concurrency}",
                "--loglevel=INFO",
                # one name per process, so that several workers on one host are told apart
                f"--hostname=imaging-facade-{os.getpid()}@{socket.gethostname()}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        exports.stop()
        store.close()


def _export_worker(config: Config, store: Store) -> ExportWorker:
    """The export jobs' runner, reading the store as the API does (same zone, base URL and
    statement timeout) and writing into the same `export.directory`."""
    from app.export.run import Where
    from app.export.settings import export_settings
    from app.export.worker import ExportWorker
    from app.store.groups import group_members
    from app.store.reader import Reader

    root = config.path.parent if config.path is not None else Path.cwd()
    settings = config.export or export_settings(None, config.store, root)
    reader = Reader(store.url, statement_timeout=config.server.statement_timeout)
    where = Where(config.timezone, config.server.base_url)
    return ExportWorker(store.engine, reader, settings, where, lambda group: group_members(reader, group))
