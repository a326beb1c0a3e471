"""Studies of one source mapped one at a time and stored a batch at a time: sources ->
mapping -> identity -> store, for every kind of run (app/sync/run.py), on-demand fetches and
watch polls alike.

A study that cannot be read or mapped goes to the quarantine with its reason and the run
goes on; the next run retries it.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy.engine import Connection

from app.identity.reconcile import pending, reconcile_pending
from app.logsafe import describe
from app.mapping import MappingError, map_study
from app.mapping.context import MappingContext
from app.sources.base import StudyFailure, StudyRecord
from app.store.repository import Store
from app.sync.summary import SyncSummary

log = logging.getLogger(__name__)

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
    nothing in the batch can have changed it (StudyCopies.read_ahead, Quarantine.waiting).
    It is written when full, when its oldest study has waited BATCH_WAIT, before anything
    that must see the stored studies (a quarantine, a deletion, the caller moving a cursor
    with `flush`), and when its `with` block ends, however it ends: a run that stops stores
    what it mapped, and a crash loses only studies no cursor has passed.
    """

    def __init__(
        self, store: Store, source_name: str, ctx: MappingContext, summary: SyncSummary, size: int = BATCH_SIZE
    ):
        self.store = store
        self.source_name = source_name
        self.ctx = ctx
        self.summary = summary
        #: the deployment's identity rules: how patients are keyed (in mapping) and matched (here)
        self.rules = ctx.identity
        self.size = size
        self.waiting: list[tuple] = []  # (mapped study, study UID, archive key, repaired)
        self.since = 0.0

    def __enter__(self) -> StudyBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()

    def add(self, item: StudyRecord | StudyFailure, archive_key: str | None = None) -> None:
        """Map one study a source yielded and queue it, or quarantine it with the reason."""
        if isinstance(item, StudyFailure):
            self.quarantine(item.location or item.uid or "unknown", item.uid, item.reason)
            return
        try:
            mapped = map_study(item, self.ctx)
        except MappingError as exc:
            self.quarantine(item.uid, item.uid, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a mapping bug must not stop the other studies
            log.error("mapping failed for a study of source %s: %s", self.source_name, describe(exc))
            self.quarantine(item.uid, item.uid, f"internal mapping error: {type(exc).__name__}")
            return
        if not self.waiting:
            self.since = time.monotonic()
        self.waiting.append((mapped, item.uid, archive_key, bool(item.repairs or mapped.repairs)))
        self.summary.pending += 1
        if len(self.waiting) >= self.size or time.monotonic() - self.since >= BATCH_WAIT:
            self.flush()

    def quarantine(self, key: str, uid: str | None, reason: str) -> None:
        self.flush()
        self.store.quarantine.add(self.source_name, key, uid, reason)
        self.summary.failed += 1

    def remove(self, uid: str) -> None:
        """The archive no longer holds the study: its copy goes (see StudyCopies.remove)."""
        self.flush()
        if self.store.studies.remove(self.source_name, uid):
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
            quarantined = self.store.quarantine.waiting(self.source_name, [s[1] for s in studies], conn)
            self.store.studies.read_ahead(conn, self.source_name, [s[0].imaging_study["id"] for s in studies])
            for mapped, uid, archive_key, repaired in studies:
                outcome = self.store.studies.put(
                    mapped.imaging_study, mapped.patient, self.source_name, archive_key, conn=conn
                )
                self._match(conn, mapped.patient["id"])
                released = self.store.quarantine.release(self.source_name, uid, conn) if uid in quarantined else 0
                outcomes.append((outcome, released, repaired))
        for outcome, released, repaired in outcomes:  # counted once committed
            self.summary.count(outcome)
            self.summary.released += released
            self.summary.repaired += repaired

    def _match(self, conn: Connection, patient_id: str) -> None:
        """Identity matching for a stored patient; should it fail, the study stays stored and
        matching runs again when its patient next changes.

        Whether there is anything to match is read first, outside a savepoint: most studies
        are of a patient whose features are filed already, and for them matching writes
        nothing and a savepoint would cost two round trips for nothing to undo.
        """
        try:
            work = pending(conn, patient_id, self.rules)
            if work is None:
                return
            with self.store.savepoint(conn):
                reconcile_pending(conn, self.store, work, self.rules)
        except Exception as exc:  # noqa: BLE001 - the study stays stored; matching runs again with its patient
            log.error("identity matching failed for a patient of source %s: %s", self.source_name, describe(exc))
