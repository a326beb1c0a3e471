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

A folder source is read here, as a local sync reads it: its files are on this host.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.result import AsyncResult

from app.logsafe import describe
from app.mapping import map_endpoint
from app.sources.queried import QueriedArchive, listed_uid
from app.sources.settings import SourceSettings
from app.store.repository import Store
from app.sync.distributed.tasks import SYNC_STUDIES
from app.sync.run import Progress, Run, cursor_before_listing, sync_source
from app.sync.summary import SyncSummary

log = logging.getLogger(__name__)

#: the counters of a run that its tasks add to
_COUNTED = ("new", "updated", "unchanged", "failed", "repaired", "released")
#: seconds between two looks at a task's result
_POLL = 0.2


def sync_distributed(
    store: Store, src: SourceSettings, app: Celery, studies_per_task: int, progress: Progress | None = None
) -> SyncSummary:
    """One full sync of `src`, its studies read and stored by the workers; what it did, as
    `sync_source` says it."""
    source = src.open()
    if not isinstance(source, QueriedArchive):
        return sync_source(store, src, progress, source)
    listed: set[str] = set()
    cursor: dict = {}
    with Run(store, src, source, None, "sync") as run:
        cursor = cursor_before_listing(src, source)
        store.resources.put(map_endpoint(run.ctx))
        listing = source.listing()
        listed = {uid for uid in map(listed_uid, listing) if uid is not None}
        total = len(listing)
        tasks = [
            app.send_task(SYNC_STUDIES, args=(src.name, [text.decode() for text in listing[i : i + studies_per_task]]))
            for i in range(0, total, studies_per_task)
        ]
        log.info("source %s: %d studies listed, sent to the workers as %d tasks", src.name, total, len(tasks))
        if progress:
            progress(run.summary, total)
        for task in tasks:
            _add(run.summary, source.stats, _result(task))
            if progress:
                progress(run.summary, total)
    return run.finish_listing(cursor, listed=listed)


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
