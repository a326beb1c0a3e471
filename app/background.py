"""A thread of each API process that works beside the requests: Bulk Data export jobs
(app/export/worker.py) and Subscription notifications (app/notify/worker.py).

The thread holds its owner weakly, so an app that is let go (a test's, a reloaded worker's)
takes its thread with it. A step that fails (the store down for a while) is tried again after a
pause that doubles up to a minute, logged the 1st, 10th and every 100th time, never more often.
"""

from __future__ import annotations

import logging
import threading
import weakref

from app.logsafe import describe

log = logging.getLogger(__name__)

#: longest pause after failing steps, in seconds
FAILURE_PAUSE_MAX = 60.0


class BackgroundLoop:
    """One daemon thread calling `step()`: at once again when a step did something, else after
    `pause()` seconds or when woken."""

    #: the thread's name, and what the log calls this work
    name = "background"

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def step(self) -> bool:
        """Do one piece of work; whether there was any."""
        raise NotImplementedError

    def pause(self) -> float:
        """Seconds to wait when a step found nothing to do."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the thread once (a forked worker process starts its own)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopped = False
            self._thread = threading.Thread(
                target=_loop, args=(weakref.ref(self), self._wake), name=self.name, daemon=True
            )
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopped = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)


def _loop(ref: weakref.ref[BackgroundLoop], wake: threading.Event) -> None:
    """Step until the loop is stopped or let go."""
    failures = 0
    while True:
        loop = ref()
        if loop is None or loop._stopped:
            return
        wait = loop.pause()
        try:
            worked = loop.step()
            failures = 0
        except Exception as err:  # noqa: BLE001 - the store may be down for a while; try again later
            failures += 1
            worked = False
            if failures in (1, 10) or failures % 100 == 0:
                log.warning("%s: %s (failure %d; retrying)", loop.name, describe(err), failures)
            wait = min(FAILURE_PAUSE_MAX, wait * (2 ** min(failures, 6)))
        del loop
        if not worked:
            wake.wait(wait)
            wake.clear()
