"""Continuous sync: every source polled on its own interval until told to stop.

Each poll is `sync_incremental` (a full reconciliation when one is due, else what changed
since the source's cursor). The cursor only moves when a poll completes, so nothing between
two polls is lost. `stop` is checked between studies: a SIGTERM finishes the study in hand and
ends the loop cleanly.

A poll that fails is tried again after a short pause that doubles up to `FAILURE_PAUSE_MAX`
(or the source's `poll_interval`, if longer), less a random part: a watcher finds an archive
that answers again within a few seconds, without asking a down archive more than every few
seconds (each poll tries a few requests, app/sources/errors.py).

On a PostgreSQL store several watchers (on several hosts) may run: a source is polled only by
the one holding its lock (app/store/leases.py); the others try again every second and take it
over when its holder dies.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from app.logsafe import describe
from app.sources.base import Source
from app.sources.settings import SourceSettings
from app.store.leases import Leases, open_leases
from app.store.repository import Store
from app.sync.run import Delegate, sync_incremental
from app.sync.summary import SyncSummary, record_outcome

log = logging.getLogger(__name__)

#: longest pause after repeated failures, in seconds (unless the source's poll_interval is longer)
FAILURE_PAUSE_MAX = 3.0
#: seconds before a watcher asks again for a source another watcher polls
STANDBY_RECHECK = 1.0


def failure_pause(poll_interval: float, failures: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after `failures` polls in a row failed: doubling from the poll interval,
    capped, with "equal jitter" (half fixed, half random) so watchers do not retry in step."""
    cap = max(FAILURE_PAUSE_MAX, poll_interval)
    pause = min(poll_interval * 2 ** min(failures - 1, 32), cap)  # an archive down for days: no overflow
    return pause / 2 + rand() * pause / 2


def watch(
    store: Store,
    sources: list[SourceSettings],
    stop: threading.Event,
    on_poll: Callable[[SyncSummary], None] | None = None,
    delegate: Delegate | None = None,
) -> None:
    """Poll `sources` until `stop` is set; on PostgreSQL, those whose lock this process holds.
    With a `delegate` (the workers of a distributed sync), it reads and stores the studies of
    the full syncs and date-window polls; this process still decides what is polled when."""
    leases = open_leases(store.url, [src.name for src in sources])
    try:
        leases.ready(5.0)
        _loop(store, sources, stop, on_poll, leases, delegate)
    finally:
        leases.close()


def _loop(
    store: Store,
    sources: list[SourceSettings],
    stop: threading.Event,
    on_poll: Callable[[SyncSummary], None] | None,
    leases: Leases,
    delegate: Delegate | None,
) -> None:
    built = {src.name: src.open() for src in sources}
    due = {src.name: 0.0 for src in sources}
    failures = {src.name: 0 for src in sources}
    while not stop.is_set():
        for src in sources:
            if stop.is_set():
                break
            if due[src.name] > time.monotonic():
                continue
            if not leases.holds(src.name):  # another watcher polls it
                due[src.name] = time.monotonic() + STANDBY_RECHECK
                failures[src.name] = 0
                continue
            name = src.name
            summary = _poll(store, src, built[name], _stop_or_lost(stop, leases, name), delegate)
            failures[name] = failures[name] + 1 if summary.error else 0
            pause = failure_pause(src.poll_interval, failures[name]) if failures[name] else src.poll_interval
            due[name] = time.monotonic() + pause
            if on_poll:
                on_poll(summary)
        stop.wait(max(0.0, min(due.values()) - time.monotonic()))


def _stop_or_lost(stop: threading.Event, leases: Leases, name: str) -> Callable[[], bool]:
    """A poll ends between studies when the watcher stops or no longer holds the source."""
    return lambda: stop.is_set() or not leases.holds(name)


def _poll(
    store: Store, src: SourceSettings, source: Source, stop: Callable[[], bool], delegate: Delegate | None
) -> SyncSummary:
    try:
        return sync_incremental(store, src, source, stop, delegate)
    except Exception as exc:  # noqa: BLE001 - a store or mapping failure must not end the watcher
        summary = SyncSummary(src.name, error=f"poll failed: {describe(exc)}")
        log.error("poll of source %s failed: %s", src.name, describe(exc))
        try:
            record_outcome(store, src.name, summary)
        except Exception as again:  # noqa: BLE001 - the store itself is down: the next poll tries again
            log.error("could not record the failure of source %s: %s", src.name, describe(again))
        return summary
