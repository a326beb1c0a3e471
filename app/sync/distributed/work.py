"""What one task of a distributed sync does: read the studies another process listed and store
them, as a local sync stores them (app/sync/batch.py), and say what that did.

Idempotent: reading and storing a study again changes nothing (its outcome is `unchanged`),
and a failing study's quarantine entry is the one it had. So a task redelivered after its
worker died, part done, stores what one clean run stores.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from app.logsafe import describe
from app.mapping.context import MappingContext
from app.sources.errors import SourceError
from app.sources.queried import QueriedArchive
from app.sources.settings import SourceSettings
from app.store.repository import Store
from app.sync.batch import StudyBatch
from app.sync.keyed import keyed_context
from app.sync.summary import SyncSummary

log = logging.getLogger(__name__)


class Worker:
    """The store and the sources of one worker process; its tasks run in several threads."""

    def __init__(self, store: Store, sources: Iterable[SourceSettings]):
        self.store = store
        self.sources = {src.name: src for src in sources}
        self._contexts: dict[str, MappingContext] = {}
        self._lock = threading.Lock()

    def _context(self, src: SourceSettings) -> MappingContext:
        with self._lock:
            if src.name not in self._contexts:
                self._contexts[src.name] = keyed_context(self.store, src)
            return self._contexts[src.name]

    def sync_listed(self, source_name: str, listing: list[str]) -> dict:
        """Read and store the listed studies (JSON texts of the coordinator's listing).

        Returns the task's part of the run's summary (SyncSummary.as_dict): counters only, no
        study or patient names, since Celery logs what a task returns. Never raises: a
        failure is the summary's `error`, and the log names its place, not its values.
        """
        summary = SyncSummary(source_name)
        src = self.sources.get(source_name)
        try:
            if src is None:
                raise SourceError(source_name, "?", "this source is not in the worker's config")
            source = src.open()
            if not isinstance(source, QueriedArchive):
                raise SourceError(src.name, src.protocol.where(), "only DICOMweb and DIMSE sources are read by workers")
            feed = source.change_feed
            try:
                with StudyBatch(self.store, src.name, self._context(src), summary) as batch:
                    for item in source.read_listed([text.encode() for text in listing]):
                        batch.add(item, feed.archive_key(item) if feed is not None else None)
            finally:
                summary.source_stats = dict(source.stats)
        except SourceError as exc:
            summary.error = str(exc)
            log.error("task of source %s stopped: %s", source_name, exc)
        except Exception as exc:  # noqa: BLE001 - the run, not the worker, reports it; the next run redoes it
            summary.error = f"a worker failed: {describe(exc)}"
            log.error("task of source %s failed: %s", source_name, describe(exc))
        return summary.as_dict()
