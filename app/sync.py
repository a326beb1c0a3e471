"""One sync of one source: sources -> mapping -> identity -> store, one study at a time,
stored in small batches (StudyBatch).

A study that cannot be read or mapped goes to the quarantine with its reason and the sync
goes on; the next sync retries it. Only a source that cannot be reached at all ends the run.

A complete listing is also how deletions are found: a study of this source that the whole
listing did not show is no longer in the archive, and its copy is removed (the study stays
while another archive holds it). A run that did not finish (archive unreachable, stopped)
deletes nothing and releases nothing from the quarantine.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Callable
from zoneinfo import ZoneInfo

import orjson

from app.config import SourceConfig
from app.identity.reconcile import pending, reconcile_pending
from app.identity.resolve import resolve
from app.logsafe import describe
from app.mapping import MappingError, map_endpoint, map_study
from app.mapping.context import MappingContext
from app.clock import instant_now_ms
from app.sources.base import StudyFailure
from app.sources.errors import SourceError
from app.store.repository import Store

log = logging.getLogger("imaging_facade.sync")


@dataclass
class SyncSummary:
    source: str
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    repaired: int = 0
    released: int = 0  # quarantined by an earlier run, fine now
    deleted: int = 0  # studies gone from the archive
    incomplete: bool = False  # the archive capped its listing: deletions were not looked for
    seconds: float = 0.0
    error: str | None = None
    source_stats: dict = field(default_factory=dict)
    #: studies mapped and waiting for their batch to be stored; done, outcome not known yet
    pending: int = field(default=0, repr=False)

    def count(self, outcome: str) -> None:
        """Add one study with its store outcome (new, updated or unchanged)."""
        setattr(self, outcome, getattr(self, outcome) + 1)

    @property
    def done(self) -> int:
        return self.new + self.updated + self.unchanged + self.failed + self.pending

    @property
    def changed(self) -> int:
        return self.new + self.updated + self.deleted

    def as_dict(self) -> dict:
        out = asdict(self)
        del out["pending"]
        return out


def mapping_context(src: SourceConfig) -> MappingContext:
    return MappingContext(
        source=src.name,
        timezone=src.timezone,
        patient_id_system=src.patient_id_system,
        issuer_systems=dict(src.issuer_systems),
        accession_system=src.accession_system,
        wado_url=src.endpoint_url or src.wado_url,
        requires_access_token=src.endpoint_requires_token,
        profile=src.profile,
    )


def build_source(src: SourceConfig):
    if src.type == "folder":
        from app.sources.folder import FolderSource

        profile = src.profile
        return FolderSource(src.name, src.path, profile.private_tag_numbers() if profile else (),
                            default_charset=profile.default_character_set if profile else None)
    if src.type == "dicomweb":
        from app.sources.dicomweb import DicomwebSource

        return DicomwebSource(src.name, src.url, username=src.username, password=src.password, token=src.token,
                              timeout=src.timeout, page_size=src.page_size,
                              instance_metadata=src.instance_metadata, max_results=src.max_results,
                              private_tags=src.profile.private_tag_numbers() if src.profile else ())
    if src.type == "dimse":
        from app.sources.dimse import DimseSource

        return DimseSource(src.name, src.host, src.port, src.called_aet, calling_aet=src.calling_aet,
                           timeout=src.timeout, max_results=src.max_results)
    raise ValueError(f"unknown source type {src.type}")


Progress = Callable[[SyncSummary, int | None], None]


def sync_source(store: Store, src: SourceConfig, progress: Progress | None = None, source=None,
                stop: Callable[[], bool] | None = None) -> SyncSummary:
    """Run one full sync of `src` into `store` and return what it did.

    `stop()` is asked between studies; when it says yes the run ends after the study in hand
    (the studies mapped so far are stored), as an incomplete run.
    """
    summary = SyncSummary(src.name)
    started_micros, _ = instant_now_ms()
    clock = time.perf_counter()
    source = source or build_source(src)
    ctx = mapping_context(src)
    stopped = False
    cursor: dict = {}
    store.update_source_state(src.name, last_attempt=started_micros)
    with StudyBatch(store, src.name, ctx, summary) as batch:
        try:
            cursor = cursor_before_listing(src, source)
            store.put_resource(map_endpoint(ctx))
            for item in source.iter_studies():
                batch.add(item, archive_key(src, item))
                if progress:
                    progress(summary, source.total())
                if stop and stop():
                    stopped = True
                    break
        except SourceError as exc:
            summary.error = str(exc)
            log.error("sync of source %s stopped: %s", src.name, exc)
    complete = getattr(source, "listing_complete", True)
    summary.incomplete = not complete
    if not summary.error and not stopped and complete:
        # the run saw every study: what it did not see is gone, what it did not quarantine again now maps
        for uid in store.copies_not_seen_since(src.name, started_micros):
            if store.remove_copy(src.name, uid):
                summary.deleted += 1
        summary.released += store.release_stale(src.name, started_micros)
    if summary.changed:
        store.analyze()
    summary.seconds = time.perf_counter() - clock
    summary.source_stats = dict(getattr(source, "stats", {}))
    status = "failed" if summary.error else "stopped" if stopped else "ok" if complete else "incomplete"
    store.record_run(src.name, started_micros, status, summary.as_dict())
    if status == "ok":
        record_outcome(store, src.name, summary, full=True, started=started_micros, cursor=cursor)
    else:
        record_outcome(store, src.name, summary)
    return summary


def _today(src: SourceConfig) -> date:
    """Today where the archive is: DICOM study dates are the archive's local dates."""
    return datetime.now(ZoneInfo(src.timezone)).date()


def follows_changes(src: SourceConfig) -> bool:
    return src.changes == "orthanc"


def cursor_before_listing(src: SourceConfig, source) -> dict:
    """Where incremental polls go on from once a complete listing that starts now is done."""
    if follows_changes(src):
        return {"seq": change_feed(src, source).last_seq()}
    if src.type in ("dicomweb", "dimse"):
        return {"window_end": _today(src).isoformat()}
    return {}


def change_feed(src: SourceConfig, source):
    """The Orthanc change feed of a source, kept on the source object between polls."""
    from app.sources.orthanc_changes import OrthancChanges

    feed = getattr(source, "change_feed", None)
    if feed is None:
        feed = source.change_feed = OrthancChanges.from_config(src)
    return feed


def archive_key(src: SourceConfig, item) -> str | None:
    """The archive's own id of a study, where deletions are reported by it (Orthanc's)."""
    if not follows_changes(src) or isinstance(item, StudyFailure):
        return None
    from app.sources.orthanc_changes import orthanc_study_id

    patient = (item.attrs or {}).get("00100020", {}).get("Value") or [None]
    return orthanc_study_id(patient[0] if isinstance(patient[0], str) else None, item.uid)


def sync_incremental(store: Store, src: SourceConfig, source, stop: Callable[[], bool] | None = None) -> SyncSummary:
    """One poll in watch mode: a full sync when one is due (or none was ever done), else only
    what changed since the cursor."""
    state = store.source_state(src.name)
    now, _ = instant_now_ms()
    due = state is None or state.last_full is None or now - state.last_full >= src.full_every * 1_000_000
    cursor = orjson.loads(state.cursor) if state is not None else {}
    if due or src.type == "folder" or not ("seq" in cursor or "window_end" in cursor):
        return sync_source(store, src, source=source, stop=stop)
    if follows_changes(src) and "seq" in cursor:
        return sync_changes(store, src, source, cursor, stop)
    return sync_window(store, src, source, cursor, stop)


#: seconds between two comparisons of Orthanc's study list with ours (its feed logs no deletions)
DELETION_CHECK_EVERY = 30.0


def sync_changes(store: Store, src: SourceConfig, source, cursor: dict,
                 stop: Callable[[], bool] | None = None) -> SyncSummary:
    """Follow Orthanc's change feed from the cursor: read each study that is new or became
    stable (complete, or grown by a series), and every so often look for studies Orthanc no
    longer holds.

    The cursor moves after each page is stored, so a run that stops or fails resumes there;
    reading a study twice changes nothing.
    """
    summary = SyncSummary(src.name)
    clock = time.perf_counter()
    started, _ = instant_now_ms()
    store.update_source_state(src.name, last_attempt=started)
    ctx = mapping_context(src)
    feed = change_feed(src, source)
    cursor = dict(cursor)
    stopped = False
    with StudyBatch(store, src.name, ctx, summary) as batch:
        try:
            for page in feed.pages(cursor["seq"]):
                if page.reset:  # the archive's database was replaced: only a full listing can tell
                    store.update_source_state(src.name, last_full=None)
                    return sync_source(store, src, source=source, stop=stop)
                for event in page.events:
                    _apply_change(batch, source, event)
                    if stop and stop():
                        stopped = True
                        break
                if stopped:
                    break
                batch.flush()
                cursor["seq"] = page.last
                store.update_source_state(src.name, cursor=cursor)
            now = time.time()
            if not stopped and now - cursor.get("deletions_checked", 0) >= DELETION_CHECK_EVERY:
                for event in feed.deleted_studies(store.archive_keys(src.name)):
                    _apply_change(batch, source, event)
                cursor["deletions_checked"] = now
        except SourceError as exc:
            summary.error = str(exc)
            log.error("poll of source %s stopped: %s", src.name, exc)
    return _end_poll(store, summary, started, clock, cursor)


def _apply_change(batch: StudyBatch, source, event) -> None:
    if event.kind == "deleted":
        batch.flush()  # the study may be waiting in it
        uid = batch.store.study_for_archive_key(batch.source_name, event.orthanc_id)
        if uid:
            batch.remove(uid)
        return
    found = False
    for item in source.iter_studies(match={"StudyInstanceUID": event.study_uid}):
        found = True
        batch.add(item, event.orthanc_id)
    if not found:  # deleted again before it was read
        batch.remove(event.study_uid)


def sync_window(store: Store, src: SourceConfig, source, cursor: dict, stop: Callable[[], bool] | None = None
                ) -> SyncSummary:
    """Poll the studies dated from the last poll's day (less the overlap) on.

    A date window cannot see deletions, or studies stored late with an old date; the full
    reconciliation every `full_every` seconds finds those.
    """
    summary = SyncSummary(src.name)
    clock = time.perf_counter()
    started, _ = instant_now_ms()
    store.update_source_state(src.name, last_attempt=started)
    ctx = mapping_context(src)
    today = _today(src)
    start = min(date.fromisoformat(cursor["window_end"]), today) - timedelta(days=src.window_overlap_days)
    stopped = False
    with StudyBatch(store, src.name, ctx, summary) as batch:
        try:
            for item in source.iter_studies(match={"StudyDate": f"{start:%Y%m%d}-"}):
                batch.add(item)
                if stop and stop():
                    stopped = True
                    break
        except SourceError as exc:
            summary.error = str(exc)
            log.error("poll of source %s stopped: %s", src.name, exc)
    return _end_poll(store, summary, started, clock,
                     None if stopped or summary.error else {"window_end": today.isoformat()})


def _end_poll(store: Store, summary: SyncSummary, started: int, clock: float, cursor: dict | None) -> SyncSummary:
    """Record a poll: a run row only when it did something (a watcher polls every second or
    so), and the source's state, with the cursor it reached if any."""
    summary.seconds = time.perf_counter() - clock
    if summary.error or summary.changed or summary.failed:
        store.record_run(summary.source, started, "failed" if summary.error else "ok", summary.as_dict())
    if cursor is None:
        record_outcome(store, summary.source, summary)
    else:
        record_outcome(store, summary.source, summary, cursor=cursor)
    return summary


def record_outcome(store: Store, source_name: str, summary: SyncSummary, full: bool = False,
                   started: int | None = None, **state) -> None:
    """Note in the source's state how a run went (what the health endpoint reports)."""
    now, _ = instant_now_ms()
    if summary.error:
        state.update(last_error=summary.error, last_error_at=now)
    else:
        state.update(last_success=now)
        if full:
            state.update(last_full=started)
    store.update_source_state(source_name, **state)


def sync_item(store: Store, source_name: str, ctx: MappingContext, item, summary: SyncSummary,
              archive_key: str | None = None) -> None:
    """Store one study a source yielded, or quarantine it with the reason."""
    with StudyBatch(store, source_name, ctx, summary) as batch:
        batch.add(item, archive_key)


#: most studies stored in one transaction, and longest (seconds) a mapped study waits for the rest
#: of its batch: a batch shares one commit and writes its index rows together (COPY on
#: PostgreSQL), which alone cost a study more than its mapping; a slow archive's studies are
#: still stored within a second or so of being read
BATCH_SIZE = 20
BATCH_WAIT = 1.0


class StudyBatch:
    """Studies of one source mapped one at a time and stored a batch at a time.

    Each study is stored as if alone, in the order read: its copy and patient, then identity
    matching for the patient, then its release from the quarantine; the batch only shares the
    transaction, and some reads made up front for all its studies, each used only while
    nothing in the batch can have changed it (Store.read_ahead, Store.quarantined_studies).
    It is written when full, when its oldest study has waited BATCH_WAIT, before anything
    that must see the stored studies (a quarantine, a deletion, the caller moving a cursor
    with `flush`), and when its `with` block ends, however it ends: a run that stops stores
    what it mapped, and a crash loses only studies no cursor has passed.
    """

    def __init__(self, store: Store, source_name: str, ctx: MappingContext, summary: SyncSummary,
                 size: int = BATCH_SIZE):
        self.store = store
        self.source_name = source_name
        self.ctx = ctx
        self.summary = summary
        self.size = size
        self.waiting: list[tuple] = []  # (mapped study, study UID, archive key, repaired)
        self.since = 0.0

    def __enter__(self) -> StudyBatch:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()

    def add(self, item, archive_key: str | None = None) -> None:
        """Map one study a source yielded and queue it, or quarantine it with the reason."""
        if isinstance(item, StudyFailure):
            self.quarantine(item.location or item.uid or "unknown", item.uid, item.reason)
            return
        try:
            mapped = map_study(item, self.ctx)
        except MappingError as exc:
            self.quarantine(item.uid, item.uid, str(exc))
            return
        except Exception as exc:  # a mapping bug must not stop the other studies
            log.error("mapping failed for a study of source %s: %s", self.source_name, describe(exc))
            self.quarantine(item.uid, item.uid, f"internal mapping error: {type(exc).__name__}")
            return
        if not self.waiting:
            self.since = time.monotonic()
        self.waiting.append((resolve(mapped, self.store.identity), item.uid, archive_key,
                             bool(item.repairs or mapped.repairs)))
        self.summary.pending += 1
        if len(self.waiting) >= self.size or time.monotonic() - self.since >= BATCH_WAIT:
            self.flush()

    def quarantine(self, key: str, uid: str | None, reason: str) -> None:
        self.flush()
        self.store.quarantine(self.source_name, key, uid, reason)
        self.summary.failed += 1

    def remove(self, uid: str) -> None:
        """The archive no longer holds the study: its copy goes (see Store.remove_copy)."""
        self.flush()
        if self.store.remove_copy(self.source_name, uid):
            self.summary.deleted += 1

    def flush(self) -> None:
        """Store the waiting studies.

        Should the store refuse the batch, each study is stored alone, so that the ones
        before the study it refuses are kept, as one transaction per study kept them.
        """
        waiting, self.waiting = self.waiting, []
        if not waiting:
            return
        self.summary.pending -= len(waiting)
        try:
            self._store(waiting)
        except Exception:
            if len(waiting) == 1:
                raise
            for study in waiting:
                self._store([study])

    def _store(self, studies: list[tuple]) -> None:
        outcomes = []
        with self.store.batch() as conn:
            # nothing quarantines a study while a batch is stored (a quarantine flushes first)
            quarantined = self.store.quarantined_studies(self.source_name, [s[1] for s in studies], conn)
            self.store.read_ahead(conn, self.source_name, [s[0].imaging_study["id"] for s in studies])
            for mapped, uid, archive_key, repaired in studies:
                outcome = self.store.put_study(mapped.imaging_study, mapped.patient, self.source_name,
                                               archive_key, conn=conn)
                self._match(conn, mapped.patient["id"])
                released = self.store.release_study(self.source_name, uid, conn) if uid in quarantined else 0
                outcomes.append((outcome, released, repaired))
        for outcome, released, repaired in outcomes:  # counted once committed
            self.summary.count(outcome)
            self.summary.released += released
            self.summary.repaired += repaired

    def _match(self, conn, patient_id: str) -> None:
        """Identity matching for a stored patient; should it fail, the study stays stored and
        matching runs again when its patient next changes.

        Whether there is anything to match is read first, outside a savepoint: most studies
        are of a patient whose features are filed already, and for them matching writes
        nothing and a savepoint would cost two round trips for nothing to undo.
        """
        try:
            work = pending(conn, patient_id, self.store.identity)
            if work is None:
                return
            with self.store.savepoint(conn):
                reconcile_pending(conn, self.store, work, self.store.identity)
        except Exception as exc:
            log.error("identity matching failed for a patient of source %s: %s", self.source_name, describe(exc))
