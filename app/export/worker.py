"""The export jobs of this API node: a background thread that claims jobs from the store, runs
them and removes the files of jobs past their expiry.

Every API node runs one (embedded: no broker needed); the store decides which node runs a job
(app/store/export_jobs.py), so several nodes sharing a store each run different jobs, and a job
whose node died is taken up again by another once its claim runs out (from the start, into a
folder of its own; the dead run's partial files go when the job expires). With several nodes,
`export.directory` must be the same shared folder on each, so any node serves any job's files.
A node starts its worker with its first export request, or at start-up when the store holds
jobs (to finish or expire them).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path

import orjson
from sqlalchemy.engine import Engine

from app.export.params import ExportRequest
from app.export.run import Stopped, Where, run_export
from app.export.settings import ExportSettings
from app.logsafe import describe
from app.store import export_jobs
from app.store.export_jobs import DONE, FAILED, Job
from app.store.reader import Reader

log = logging.getLogger(__name__)


def now_micros() -> int:
    return time.time_ns() // 1000


class ExportWorker:
    """`members(group)`: the Patient ids of a Group (a source), read when its job runs."""

    def __init__(
        self,
        engine: Engine,
        reader: Reader,
        settings: ExportSettings,
        where: Where,
        members: Callable[[str], list[str]],
    ):
        self.engine = engine
        self.reader = reader
        self.settings = settings
        self.where = where
        self.members = members
        self.node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def job_directory(self, job_id: str) -> Path:
        return self.settings.directory / job_id

    def start(self) -> None:
        """Start the thread once (a forked worker process starts its own)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopped = False
            self._thread = threading.Thread(
                target=_loop, args=(weakref.ref(self), self._wake), name="bulk-export", daemon=True
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

    def step(self) -> bool:
        """Remove what expired, then run one job if there is one; whether one ran."""
        self.sweep()
        job = export_jobs.claim(self.engine, self.node, now_micros(), int(self.settings.lease * 1_000_000))
        if job is None:
            return False
        self.run(job)
        return True

    def sweep(self) -> None:
        for job_id in export_jobs.expired(self.engine, now_micros()):
            self.remove_files(job_id)
            export_jobs.remove(self.engine, job_id)

    def remove_files(self, job_id: str) -> None:
        """Every file of the job, of every run of it."""
        shutil.rmtree(self.job_directory(job_id), ignore_errors=True)

    def run(self, job: Job) -> None:
        """Run a claimed job into a folder of this run's own (`<job>/<run>/`): a run taken over
        from a node that died starts afresh, and a node that lost its claim removes only its
        own files, never those of the node that runs the job now (with `export.directory` shared)."""
        run_id = uuid.uuid4().hex[:12]
        directory = self.job_directory(job.id) / run_id
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        lease = int(self.settings.lease * 1_000_000)

        def keep_going(progress: str) -> bool:
            return export_jobs.renew(self.engine, job.id, self.node, now_micros() + lease, progress)

        params = orjson.loads(job.params)
        request = ExportRequest.from_json(params["request"])
        try:
            members = self.members(request.group) if request.group is not None else None
            manifest = run_export(
                self.reader,
                request,
                params["types"],
                params["narrowing"],
                members,
                directory,
                self.where,
                self.settings.page_size,
                self.settings.max_file_resources,
                keep_going,
            )
        except Stopped:  # cancelled, or another node runs it now
            shutil.rmtree(directory, ignore_errors=True)
            return
        except Exception as err:  # noqa: BLE001 - a job that fails is reported on its status, not lost
            log.error("bulk export %s failed: %s", job.id, describe(err))
            now = now_micros()
            shutil.rmtree(directory, ignore_errors=True)
            expires = now + self.settings.retention * 1_000_000
            export_jobs.finish(self.engine, job.id, self.node, FAILED, now, expires, None, describe(err))
            return
        now = now_micros()
        expires = now + self.settings.retention * 1_000_000
        manifest["run"] = run_id
        if not export_jobs.finish(self.engine, job.id, self.node, DONE, now, expires, orjson.dumps(manifest), None):
            shutil.rmtree(directory, ignore_errors=True)


def _loop(ref: weakref.ref[ExportWorker], wake: threading.Event) -> None:
    """Run jobs until the worker is stopped or let go (its app is gone)."""
    failures = 0
    while True:
        worker = ref()
        if worker is None or worker._stopped:
            return
        wait = worker.settings.poll_interval
        try:
            ran = worker.step()
            failures = 0
        except Exception as err:  # noqa: BLE001 - the store may be down for a while; try again later
            failures += 1
            ran = False
            if failures in (1, 10) or failures % 100 == 0:
                log.warning("bulk export worker: %s (failure %d; retrying)", describe(err), failures)
            wait = min(60.0, wait * (2 ** min(failures, 6)))
        del worker
        if not ran:
            wake.wait(wait)
            wake.clear()
