"""`imaging-facade sync [--watch] [--distributed]`: one sync of every source (or one) with a
progress bar and a summary, or continuous syncing until SIGTERM or Ctrl-C; with
`--distributed`, the studies are read and stored by `imaging-facade worker` processes (a
watcher keeps the steps along a change feed, and which source is polled when)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from app.cli.common import config_option, fail, json_logs, load, open_store, say, task_queue
from app.config import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from celery import Celery

    from app.sources.settings import SourceSettings
    from app.store.repository import Store
    from app.sync.run import Delegate, Progress
    from app.sync.summary import SyncSummary


@click.command()
@config_option
@click.option("--source", "source_name", default=None, help="sync only this source")
@click.option("--watch", is_flag=True, help="keep syncing until stopped (SIGTERM or Ctrl-C)")
@click.option(
    "--distributed", is_flag=True, help="hand the studies to `imaging-facade worker` processes (needs `queue`)"
)
def sync(config_path: str | None, source_name: str | None, watch: bool, distributed: bool) -> None:
    """Run one sync of every source (or one) with a progress bar and a summary."""

    config = load(config_path)
    try:
        sources = [config.source(source_name)] if source_name else config.sources
    except ConfigError as exc:
        fail(str(exc))
    if not sources:
        fail("no sources configured")
    runner = delegate = None
    if distributed:
        app, queue = task_queue(config, "sync --watch --distributed" if watch else "sync --distributed")
        runner = _distributed(app, queue.studies_per_task)
        delegate = _workers(app, queue.studies_per_task)
    store = open_store(config)
    if watch:
        if config.metrics.port is not None and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            from app.metrics import serve_metrics  # (under `serve`, its arbiter reports this process's counts)

            serve_metrics(config)
        _watch(store, sources, delegate)
        return
    failed = False
    for src in sources:
        summary = sync_with_progress(store, src, runner)
        failed = failed or bool(summary.error)
    sys.exit(1 if failed else 0)


def _distributed(app: Celery, studies_per_task: int) -> Callable[[Store, SourceSettings, Progress], SyncSummary]:
    """A full sync whose studies the workers read and store (app/sync/distributed)."""
    from app.sync.distributed.coordinator import sync_distributed

    def run(store: Store, src: SourceSettings, progress: Progress) -> SyncSummary:
        return sync_distributed(store, src, app, studies_per_task, progress)

    return run


def _workers(app: Celery, studies_per_task: int) -> Delegate:
    """A watcher's delegate: its full syncs and date-window polls go to the workers."""
    from app.sync.distributed.coordinator import Workers

    return Workers(app, studies_per_task)


def _watch(store: Store, sources: list[SourceSettings], delegate: Delegate | None = None) -> None:
    """Poll until SIGTERM or SIGINT; the study in hand is finished first."""
    import signal
    import threading

    from app.sync.watch import watch

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def report(summary: SyncSummary) -> None:
        if summary.error:
            say(f"{summary.source}: poll failed: {summary.error}", err=True)
        elif summary.changed or summary.failed:
            say(
                f"{summary.source}: {summary.new} new, {summary.updated} updated, {summary.deleted} deleted, "
                f"{summary.failed} failed"
            )

    names = ", ".join(src.name for src in sources)
    say(f"watching {names}; stop with SIGTERM or Ctrl-C")
    watch(store, sources, stop, report, delegate)
    store.close()
    say("stopped")


def sync_with_progress(
    store: Store,
    src: SourceSettings,
    runner: Callable[[Store, SourceSettings, Progress], SyncSummary] | None = None,
) -> SyncSummary:
    """One full sync of `src` (by `runner`, else in this process) with a progress bar on
    stderr, then its summary; the SyncSummary. With JSON logs, no bar: the summary goes into
    the log."""
    from app.sync import sync_source

    if json_logs():
        summary = (runner or sync_source)(store, src, lambda _summary, _total: None)
        _report(src.name, summary)
        return summary
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = [
        TextColumn(f"[bold]{src.name}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} studies/s"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(src.name, total=None, rate=0.0)

        def progress(summary: SyncSummary, total: int | None) -> None:
            elapsed = max(bar.tasks[0].elapsed or 0.0, 1e-6)
            bar.update(task, completed=summary.done, total=total, rate=summary.done / elapsed)

        summary = (runner or sync_source)(store, src, progress)
    _report(src.name, summary)
    return summary


def _report(name: str, summary: SyncSummary) -> None:
    stats = ", ".join(f"{k} {v}" for k, v in summary.source_stats.items())
    say(
        f"{name}: {summary.new} new, {summary.updated} updated, {summary.unchanged} unchanged, "
        f"{summary.failed} failed ({summary.repaired} repaired) in {summary.seconds:.1f}s"
        + (f" [{stats}]" if stats else "")
    )
    if summary.failed:
        say(f"{name}: {summary.failed} studies quarantined; `imaging-facade quarantine list --source {name}` shows why")
    if summary.released:
        say(f"{name}: {summary.released} studies left the quarantine")
    if summary.deleted:
        say(f"{name}: {summary.deleted} studies are no longer in the archive")
    if summary.incomplete:
        say(
            f"{name}: the archive's listing was incomplete (it caps its answers); deleted studies were not looked for",
            err=True,
        )
    if summary.error:
        say(f"{name}: sync stopped: {summary.error}", err=True)
