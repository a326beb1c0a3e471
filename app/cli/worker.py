"""`imaging-facade worker`: a Celery worker that reads and stores the studies a distributed sync
(`sync --distributed`) hands out, on any host that reaches the broker, the archives and the
PostgreSQL store."""

from __future__ import annotations

import os
import socket

import click

from app.cli.common import config_option, load, open_store, task_queue


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
    """Run a worker of distributed syncs until SIGTERM (the tasks in hand are finished first)."""
    config = load(config_path)
    app, _ = task_queue(config, "worker")
    store = open_store(config)

    from app.sync.distributed.tasks import serve_tasks
    from app.sync.distributed.work import Worker

    serve_tasks(app, Worker(store, config.sources))
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
        store.close()
