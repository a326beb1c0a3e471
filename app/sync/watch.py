"""Continuous sync: every source polled on its own interval until told to stop.

Each poll is `sync_incremental` (a full reconciliation when one is due, else what changed
since the source's cursor). A poll that fails is retried later with a growing pause; the
cursor only moves when a poll completes, so nothing between two polls is lost. `stop` is
checked between studies: a SIGTERM finishes the study in hand and ends the loop cleanly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from app.logsafe import describe
from app.sources.base import Source
from app.sources.settings import SourceSettings
from app.store.repository import Store
from app.sync.run import sync_incremental
from app.sync.summary import SyncSummary, record_outcome

log = logging.getLogger(__name__)

#: longest pause after repeated failures, in seconds
MAX_BACKOFF = 300.0


def watch(
    store: Store,
    sources: list[SourceSettings],
    stop: threading.Event,
    on_poll: Callable[[SyncSummary], None] | None = None,
) -> None:
    """Poll `sources` until `stop` is set."""
    built = {src.name: src.open() for src in sources}
    due = {src.name: 0.0 for src in sources}
    failures = {src.name: 0 for src in sources}
    while not stop.is_set():
        for src in sources:
            if stop.is_set():
                break
            if due[src.name] > time.monotonic():
                continue
            summary = _poll(store, src, built[src.name], stop)
            failures[src.name] = failures[src.name] + 1 if summary.error else 0
            pause = src.poll_interval * (2 ** failures[src.name]) if failures[src.name] else src.poll_interval
            due[src.name] = time.monotonic() + min(pause, max(MAX_BACKOFF, src.poll_interval))
            if on_poll:
                on_poll(summary)
        stop.wait(max(0.0, min(due.values()) - time.monotonic()))


def _poll(store: Store, src: SourceSettings, source: Source, stop: threading.Event) -> SyncSummary:
    try:
        return sync_incremental(store, src, source, stop.is_set)
    except Exception as exc:  # noqa: BLE001 - a store or mapping failure must not end the watcher
        summary = SyncSummary(src.name, error=f"poll failed: {describe(exc)}")
        log.error("poll of source %s failed: %s", src.name, describe(exc))
        try:
            record_outcome(store, src.name, summary)
        except Exception as again:  # noqa: BLE001 - the store itself is down: the next poll tries again
            log.error("could not record the failure of source %s: %s", src.name, describe(again))
        return summary
