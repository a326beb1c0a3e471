"""The runs of one source: a full sync (a complete listing), a date-window poll and a step along
the archive's change feed. All three share one skeleton (`Run`): note the attempt, map and
store studies a batch at a time (app/sync/batch.py), end the run at a SourceError or a stop,
and record how it went.

A complete listing is also how deletions are found: a study of this source that the whole
listing did not show is no longer in the archive, and its copy is removed (the study stays
while another archive holds it). A run that did not finish (archive unreachable, stopped)
deletes nothing and releases nothing from the quarantine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from types import TracebackType
from typing import Protocol
from zoneinfo import ZoneInfo

import orjson

from app.clock import instant_now_ms
from app.mapping import map_endpoint
from app.sources.base import ChangeFeed, Source
from app.sources.errors import SourceError
from app.sources.orthanc_changes import ChangeEvent
from app.sources.settings import SourceSettings
from app.store.repository import Store
from app.sync.batch import StudyBatch
from app.sync.keyed import keyed_context
from app.sync.summary import SyncSummary, record_outcome

log = logging.getLogger(__name__)

Progress = Callable[[SyncSummary, int | None], None]
Stop = Callable[[], bool]

#: seconds between two comparisons of Orthanc's study list with ours (its feed logs no deletions)
DELETION_CHECK_EVERY = 30.0


class Run:
    """One run of one source: what every kind of run does before, around and after its studies.

    Used as a `with` block around the run's reading: the batch is stored when the block ends,
    however it ends, and a SourceError (the archive cannot be read) ends the block as a
    failed run instead of raising.
    """

    def __init__(self, store: Store, src: SourceSettings, source: Source, stop: Stop | None, kind: str):
        self.store = store
        self.src = src
        self.source = source
        self.stop = stop
        self.kind = kind  # "sync" or "poll", for the log
        self.summary = SyncSummary(src.name)
        self.started, _ = instant_now_ms()
        self.clock = time.perf_counter()
        self.stopped = False
        self.ctx = keyed_context(store, src)
        self.batch = StudyBatch(store, src.name, self.ctx, self.summary)

    def __enter__(self) -> Run:
        self.store.sync_state.update(self.src.name, last_attempt=self.started)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _traceback: TracebackType | None
    ) -> bool:
        self.batch.flush()
        if isinstance(error, SourceError):
            self.summary.error = str(error)
            log.error("%s of source %s stopped: %s", self.kind, self.src.name, error)
            return True
        return False

    def stop_asked(self) -> bool:
        """Whether `stop` says the run should end after the study in hand (asked between studies)."""
        if self.stop is not None and self.stop():
            self.stopped = True
        return self.stopped

    def finish_listing(self, cursor: dict, listed: set[str] | None = None) -> SyncSummary:
        """Record a full sync. One that saw every study also settles what it did not see: studies
        gone from the archive leave, quarantined ones it did not quarantine again are released.

        `listed`: the studies of the listing, when other processes stored them (a distributed
        sync): the studies gone are then those not in it, whatever their hosts' clocks said.
        """
        store, name, summary = self.store, self.src.name, self.summary
        complete = self.source.listing_complete
        summary.incomplete = not complete
        if not summary.error and not self.stopped and complete:
            if listed is None:
                gone = store.studies.not_seen_since(name, self.started)
            else:
                gone = [uid for uid in store.studies.held_by(name) if uid not in listed]
            for uid in gone:
                if store.studies.remove(name, uid):
                    summary.deleted += 1
            summary.released += store.quarantine.release_stale(name, self.started)
        if summary.changed:
            store.analyze()
        summary.seconds = time.perf_counter() - self.clock
        summary.source_stats = dict(self.source.stats)
        status = "failed" if summary.error else "stopped" if self.stopped else "ok" if complete else "incomplete"
        store.sync_state.record_run(name, self.started, status, summary.as_dict())
        if status == "ok":
            record_outcome(store, name, summary, full=True, started=self.started, cursor=cursor)
        else:
            record_outcome(store, name, summary)
        return summary

    def finish(self, cursor: dict | None) -> SyncSummary:
        """Record a poll: a run row only when it did something (a watcher polls every second or
        so), and the source's state, with the cursor it reached if any."""
        summary = self.summary
        summary.seconds = time.perf_counter() - self.clock
        if summary.error or summary.changed or summary.failed:
            self.store.sync_state.record_run(
                summary.source, self.started, "failed" if summary.error else "ok", summary.as_dict()
            )
        if cursor is None:
            record_outcome(self.store, summary.source, summary)
        else:
            record_outcome(self.store, summary.source, summary, cursor=cursor)
        return summary


def _today(src: SourceSettings) -> date:
    """Today where the archive is: DICOM study dates are the archive's local dates."""
    return datetime.now(ZoneInfo(src.timezone)).date()


def cursor_before_listing(src: SourceSettings, source: Source) -> dict:
    """Where incremental polls go on from once a complete listing that starts now is done."""
    if source.change_feed is not None:
        return {"seq": source.change_feed.last_seq()}
    if source.answers_queries:
        return {"window_end": _today(src).isoformat()}
    return {}


def _archive_key(feed: ChangeFeed | None) -> Callable:
    """How a listed study is named in the archive's change feed, where there is one."""
    return feed.archive_key if feed is not None else lambda item: None


def sync_source(
    store: Store,
    src: SourceSettings,
    progress: Progress | None = None,
    source: Source | None = None,
    stop: Stop | None = None,
) -> SyncSummary:
    """Run one full sync of `src` into `store` and return what it did.

    `stop()` is asked between studies; when it says yes the run ends after the study in hand
    (the studies mapped so far are stored), as an incomplete run.
    """
    source = source or src.open()
    cursor: dict = {}
    with Run(store, src, source, stop, "sync") as run:
        cursor = cursor_before_listing(src, source)
        store.resources.put(map_endpoint(run.ctx))
        key = _archive_key(source.change_feed)
        for item in source.iter_studies():
            run.batch.add(item, key(item))
            if progress:
                progress(run.summary, source.total())
            if run.stop_asked():
                break
    return run.finish_listing(cursor)


class Delegate(Protocol):
    """Who reads and stores the studies of a watcher's full syncs and date-window polls, when
    not the watcher itself: the workers of a distributed sync (app/sync/distributed)."""

    def full(self, store: Store, src: SourceSettings, source: Source, stop: Stop | None) -> SyncSummary: ...

    def window(
        self, store: Store, src: SourceSettings, source: Source, cursor: dict, stop: Stop | None
    ) -> SyncSummary: ...


def sync_incremental(
    store: Store, src: SourceSettings, source: Source, stop: Stop | None = None, delegate: Delegate | None = None
) -> SyncSummary:
    """One poll in watch mode: a full sync when one is due (or none was ever done), else only
    what changed since the cursor. With a `delegate`, the full syncs and the date-window polls
    are its; a step along a change feed stays here (its events are applied in their order)."""
    state = store.sync_state.get(src.name)
    now, _ = instant_now_ms()
    due = state is None or state.last_full is None or now - state.last_full >= src.full_every * 1_000_000
    cursor = orjson.loads(state.cursor) if state is not None else {}
    if due or not source.answers_queries or not ("seq" in cursor or "window_end" in cursor):
        if delegate is not None:
            return delegate.full(store, src, source, stop)
        return sync_source(store, src, source=source, stop=stop)
    if source.change_feed is not None and "seq" in cursor:
        return sync_changes(store, src, source, cursor, stop)
    if delegate is not None:
        return delegate.window(store, src, source, cursor, stop)
    return sync_window(store, src, source, cursor, stop)


def sync_changes(
    store: Store, src: SourceSettings, source: Source, cursor: dict, stop: Stop | None = None
) -> SyncSummary:
    """Follow the archive's change feed from the cursor: read each study that is new or became
    stable (complete, or grown by a series), and every so often look for studies the archive
    no longer holds.

    The cursor moves after each page is stored, so a run that stops or fails resumes there;
    reading a study twice changes nothing.
    """
    feed = source.change_feed
    assert feed is not None, "sync_changes needs a source with a change feed"
    cursor = dict(cursor)
    with Run(store, src, source, stop, "poll") as run:
        for page in feed.pages(cursor["seq"]):
            if page.reset:  # the archive's database was replaced: only a full listing can tell
                store.sync_state.update(src.name, last_full=None)
                return sync_source(store, src, source=source, stop=stop)
            for event in page.events:
                _apply_change(run.batch, source, event)
                if run.stop_asked():
                    break
            if run.stopped:
                break
            run.batch.flush()
            cursor["seq"] = page.last
            store.sync_state.update(src.name, cursor=cursor)
        now = time.time()
        if not run.stop_asked() and now - cursor.get("deletions_checked", 0) >= DELETION_CHECK_EVERY:
            for event in feed.deleted_studies(store.studies.archive_keys(src.name)):
                _apply_change(run.batch, source, event)
            cursor["deletions_checked"] = now
    return run.finish(cursor)


def _apply_change(batch: StudyBatch, source: Source, event: ChangeEvent) -> None:
    """Act on one change event: a deleted study's copy goes; a new or stable one is read again."""
    if event.kind == "deleted":
        batch.flush()  # the study may be waiting in it
        uid = batch.store.studies.for_archive_key(batch.source_name, event.orthanc_id)
        if uid:
            batch.remove(uid)
        return
    assert event.study_uid is not None  # the feed names the study of every "study" event
    found = False
    for item in source.iter_studies(match={"StudyInstanceUID": event.study_uid}):
        found = True
        batch.add(item, event.orthanc_id)
    if not found:  # deleted again before it was read
        batch.remove(event.study_uid)


def sync_window(
    store: Store, src: SourceSettings, source: Source, cursor: dict, stop: Stop | None = None
) -> SyncSummary:
    """Poll the studies dated from the last poll's day (less the overlap) on.

    A date window cannot see deletions, or studies stored late with an old date; the full
    reconciliation every `full_every` seconds finds those.
    """
    match, reached = window_match(src, cursor)
    with Run(store, src, source, stop, "poll") as run:
        for item in source.iter_studies(match=match):
            run.batch.add(item)
            if run.stop_asked():
                break
    return run.finish(None if run.stopped or run.summary.error else reached)


def window_match(src: SourceSettings, cursor: dict) -> tuple[dict, dict]:
    """The query of a date-window poll from `cursor` (studies dated from its day, less the
    overlap, on: a DICOM date range, PS3.4 C.2.2.2.5), and the cursor it reaches once done."""
    today = _today(src)
    start = min(date.fromisoformat(cursor["window_end"]), today) - timedelta(days=src.window_overlap_days)
    return {"StudyDate": f"{start:%Y%m%d}-"}, {"window_end": today.isoformat()}
