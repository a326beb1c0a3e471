"""One sync of one source: sources -> mapping -> identity -> store, one study at a time.

A study that cannot be read or mapped goes to the quarantine with its reason and the sync
goes on; the next sync retries it. Only a source that cannot be reached at all ends the run.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from app.config import SourceConfig
from app.logsafe import describe
from app.mapping import MappingError, map_endpoint, map_study
from app.mapping.context import MappingContext
from app.search.dates import instant_now_ms
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
    seconds: float = 0.0
    error: str | None = None
    source_stats: dict = field(default_factory=dict)

    def count(self, outcome: str) -> None:
        """Add one study with its store outcome (new, updated or unchanged)."""
        setattr(self, outcome, getattr(self, outcome) + 1)

    @property
    def done(self) -> int:
        return self.new + self.updated + self.unchanged + self.failed

    def as_dict(self) -> dict:
        return asdict(self)


def mapping_context(src: SourceConfig) -> MappingContext:
    return MappingContext(
        source=src.name,
        timezone=src.timezone,
        patient_id_system=src.patient_id_system,
        issuer_systems=dict(src.issuer_systems),
        accession_system=src.accession_system,
        wado_url=src.wado_url,
    )


def build_source(src: SourceConfig):
    if src.type == "folder":
        from app.sources.folder import FolderSource

        return FolderSource(src.name, src.path)
    if src.type == "dicomweb":
        from app.sources.dicomweb import DicomwebSource

        return DicomwebSource(src.name, src.url, username=src.username, password=src.password, token=src.token,
                              timeout=src.timeout, page_size=src.page_size,
                              instance_metadata=src.instance_metadata)
    if src.type == "dimse":
        from app.sources.dimse import DimseSource

        return DimseSource(src.name, src.host, src.port, src.called_aet, calling_aet=src.calling_aet,
                           timeout=src.timeout)
    raise ValueError(f"unknown source type {src.type}")


Progress = Callable[[SyncSummary, int | None], None]


def sync_source(store: Store, src: SourceConfig, progress: Progress | None = None, source=None) -> SyncSummary:
    """Run one full sync of `src` into `store` and return what it did."""
    summary = SyncSummary(src.name)
    started_micros, _ = instant_now_ms()
    clock = time.perf_counter()
    source = source or build_source(src)
    ctx = mapping_context(src)
    try:
        store.put_resource(map_endpoint(ctx))
        for item in source.iter_studies():
            if isinstance(item, StudyFailure):
                key = item.location or item.uid or "unknown"
                store.quarantine(src.name, key, item.uid, item.reason)
                summary.failed += 1
            else:
                _sync_one(store, src.name, ctx, item, summary)
            if progress:
                progress(summary, source.total())
    except SourceError as exc:
        summary.error = str(exc)
        log.error("sync of source %s stopped: %s", src.name, exc)
    else:
        # the run saw every study: what it did not quarantine again now maps (or is gone)
        summary.released = store.release_stale(src.name, started_micros)
    summary.seconds = time.perf_counter() - clock
    summary.source_stats = dict(getattr(source, "stats", {}))
    store.record_run(src.name, started_micros, "failed" if summary.error else "ok", summary.as_dict())
    return summary


def _sync_one(store, source_name, ctx, record, summary) -> None:
    try:
        mapped = map_study(record, ctx)
    except MappingError as exc:
        store.quarantine(source_name, record.uid, record.uid, str(exc))
        summary.failed += 1
        return
    except Exception as exc:  # a mapping bug must not stop the other studies
        log.error("mapping failed for a study of source %s: %s", source_name, describe(exc))
        store.quarantine(source_name, record.uid, record.uid, f"internal mapping error: {type(exc).__name__}")
        summary.failed += 1
        return
    summary.count(store.put_study(mapped.imaging_study, mapped.patient, source_name))
    if record.repairs or mapped.repairs:
        summary.repaired += 1
