"""`sync --distributed`: a full sync whose studies are read and stored by Celery workers.

The coordinator does what only one process can do, the rest goes to the workers:

1. as a local sync (app/sync/run.py `Run`): note the attempt, the cursor polls go on from, the
   source's Endpoint; then the study-level listing (one process lists, so the listing is
   sliced, counted and checked once);
2. the listing cut into tasks of `studies_per_task` studies (their listing answers travel with
   them, so a worker asks the archive only for their series and instances), sent to the queue;
3. each task's result waited for, in order, and added up: the run's counters (new, updated,
   unchanged, failed, repaired, released) and the source's (requests, series, instances...);
4. the run settled as a local full sync settles it: studies no longer listed leave (found by
   the listing, not by the time a worker stored a study), quarantine entries no task renewed
   are released, the run and the source's state are recorded.

A watcher (`sync --watch --distributed`) hands the workers its full syncs and its date-window
polls the same way (`Workers`); it keeps the steps along a change feed, whose events are
applied in their order, and the choice of what to poll when, which only the source's elected
poller makes (app/store/leases.py).

A folder source is read here, as a local sync reads it: its files are on this host.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.result import AsyncResult

from app.logsafe import describe
from app.mapping import map_endpoint
from app.sources.base import Source
from app.sources.queried import QueriedArchive, listed_uid
from app.sources.settings import SourceSettings
from app.store.repository import Store
from app.sync.distributed.tasks import SYNC_STUDIES
from app.sync.run import Progress, Run, Stop, cursor_before_listing, sync_source, sync_window, window_match
from app.sync.summary import SyncSummary

log = logging.getLogger(__name__)

#: the counters of a run that its tasks add to
_COUNTED = ("new", "updated", "unchanged", "failed", "repaired", "released")
#: seconds between two looks at a task's result
_POLL = 0.2


def sync_distributed(
    store: Store,
    src: SourceSettings,
    app: Celery,
    studies_per_task: int,
    progress: Progress | None = None,
    source: Source | None = None,
    stop: Stop | None = None,
) -> SyncSummary:
    """One full sync of `src`, its studies read and stored by the workers; what it did, as
    `sync_source` says it. `stop()` is asked between task results: a run told to stop waits
    no more (the tasks sent run anyway, changing nothing a later run would not) and, being
    incomplete, deletes nothing."""
    source = source or src.open()
    if not isinstance(source, QueriedArchive):
        return sync_source(store, src, progress, source, stop)
    listed: set[str] = set()
    cursor: dict = {}
    with Run(store, src, source, stop, "sync") as run:
        cursor = cursor_before_listing(src, source)
        store.resources.put(map_endpoint(run.ctx))
        listing = source.listing()
        listed = {uid for uid in map(listed_uid, listing) if uid is not None}
        _hand_over(run, app, listing, studies_per_task, progress)
    return run.finish_listing(cursor, listed=listed)


def poll_window_distributed(
    store: Store,
    src: SourceSettings,
    app: Celery,
    studies_per_task: int,
    source: Source,
    cursor: dict,
    stop: Stop | None = None,
) -> SyncSummary:
    """A watcher's date-window poll (app/sync/run.py `sync_window`), its studies read and
    stored by the workers; the cursor moves only once every task is done."""
    if not isinstance(source, QueriedArchive):
        return sync_window(store, src, source, cursor, stop)
    match, reached = window_match(src, cursor)
    with Run(store, src, source, stop, "poll") as run:
        _hand_over(run, app, source.listing(match=match), studies_per_task, None)
    return run.finish(None if run.stopped or run.summary.error else reached)


class Workers:
    """A watcher's delegate (app/sync/run.py `Delegate`): its full syncs and date-window polls
    go to the workers of `app`."""

    def __init__(self, app: Celery, studies_per_task: int):
        self.app = app
        self.studies_per_task = studies_per_task

    def full(self, store: Store, src: SourceSettings, source: Source, stop: Stop | None) -> SyncSummary:
        return sync_distributed(store, src, self.app, self.studies_per_task, None, source, stop)

    def window(self, store: Store, src: SourceSettings, source: Source, cursor: dict, stop: Stop | None) -> SyncSummary:
        return poll_window_distributed(store, src, self.app, self.studies_per_task, source, cursor, stop)


def _hand_over(run: Run, app: Celery, listing: list[bytes], studies_per_task: int, progress: Progress | None) -> None:
    """Send `listing` to the workers in tasks of `studies_per_task` studies and add up their
    results, in order, into the run; stop waiting when the run is told to stop."""
    src, total = run.src, len(listing)
    tasks = [
        app.send_task(SYNC_STUDIES, args=(src.name, [text.decode() for text in listing[i : i + studies_per_task]]))
        for i in range(0, total, studies_per_task)
    ]
    log.info("source %s: %d studies listed, sent to the workers as %d tasks", src.name, total, len(tasks))
    if progress:
        progress(run.summary, total)
    for task in tasks:
        if run.stop_asked():
            break
        _add(run.summary, run.source.stats, _result(task))
        if progress:
            progress(run.summary, total)


def _result(task: AsyncResult) -> dict:
    """A task's summary once a worker has run it (again, if the first one died), then forgotten."""
    try:
        value = task.get(interval=_POLL, propagate=False, disable_sync_subtasks=False)
    finally:
        task.forget()
    if isinstance(value, dict):
        return value
    return {"error": f"a worker failed: {describe(value) if isinstance(value, BaseException) else value}"}


def _add(summary: SyncSummary, stats: dict, part: dict) -> None:
    """Count a task's part into the run's summary and the source's counters."""
    for name in _COUNTED:
        setattr(summary, name, getattr(summary, name) + part.get(name, 0))
    for name, value in (part.get("source_stats") or {}).items():
        if name not in ("studies_listed", "listing_queries", "listing_gaps"):
            stats[name] = stats.get(name, 0) + value
    if part.get("error") and not summary.error:
        summary.error = part["error"]
        log.error("a task of source %s failed: %s", summary.source, part["error"])
