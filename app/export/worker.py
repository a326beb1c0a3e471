"""The export jobs of this API node: a background thread that claims jobs from the store, runs
them and removes the files of jobs past their expiry.

Every API node runs one (embedded: no broker needed); the store decides which node runs a job
(app/store/export_jobs.py), so several nodes sharing a store each run different jobs, and a job
whose node died is taken up again by another once its claim runs out (from the start, into a
folder of its own; the dead run's partial files go when the job expires). With several nodes,
`export.directory` must be the same shared folder on each, so any node serves any job's files.
A node starts its worker with its first export request, or at start-up when the store holds
jobs (to finish or expire them).

With `queue:` configured the jobs are run by `imaging-facade worker` processes instead
(app/export/tasks.py, `run_job`: the same claim and lease, one task per job); the API nodes'
thread then only removes what expired (`runs_jobs` False).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
from sqlalchemy.engine import Engine

from app.background import BackgroundLoop
from app.export.params import ExportRequest
from app.export.run import Stopped, Where, run_export
from app.export.settings import ExportSettings
from app.logsafe import describe
from app.store import export_jobs
from app.store.export_jobs import DONE, FAILED, QUEUED, RUNNING, Job
from app.store.reader import Reader

log = logging.getLogger(__name__)


def now_micros() -> int:
    return time.time_ns() // 1000


class ExportWorker(BackgroundLoop):
    """`members(group)`: the Patient ids of a Group (a source), read when its job runs."""

    name = "bulk-export"

    def __init__(
        self,
        engine: Engine,
        reader: Reader,
        settings: ExportSettings,
        where: Where,
        members: Callable[[str], list[str]],
        runs_jobs: bool = True,
    ):
        self.engine = engine
        self.reader = reader
        self.settings = settings
        self.where = where
        self.members = members
        self.runs_jobs = runs_jobs
        self.node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        super().__init__()

    def job_directory(self, job_id: str) -> Path:
        return self.settings.directory / job_id

    def pause(self) -> float:
        return self.settings.poll_interval

    def step(self) -> bool:
        """Remove what expired, then run one job if there is one; whether one ran."""
        self.sweep()
        if not self.runs_jobs:
            return False
        job = export_jobs.claim(self.engine, self.node, now_micros(), int(self.settings.lease * 1_000_000))
        if job is None:
            return False
        self.run(job)
        return True

    def run_job(self, job_id: str) -> None:
        """Run this job unless it has ended (a worker's task, app/export/tasks.py). While another
        process holds its claim, wait: it ends the job, or dies and its claim runs out, and then
        this one takes it (a redelivered task of a worker killed mid-job does so)."""
        while not self._stopped:
            job = export_jobs.get(self.engine, job_id)
            if job is None or job.status not in (QUEUED, RUNNING):
                return
            run_id = uuid.uuid4().hex[:12]
            claimed = export_jobs.claim_one(
                self.engine, job_id, f"{self.node}/{run_id}", now_micros(), int(self.settings.lease * 1_000_000)
            )
            if claimed is not None:
                self.run(claimed, run_id)
                return
            if job.lease_until is not None:
                wait = (job.lease_until - now_micros()) / 1_000_000
            else:
                wait = self.settings.poll_interval
            time.sleep(min(max(wait, 0.05), self.settings.poll_interval * 5))

    def sweep(self) -> None:
        for job_id in export_jobs.expired(self.engine, now_micros()):
            self.remove_files(job_id)
            export_jobs.remove(self.engine, job_id)

    def remove_files(self, job_id: str) -> None:
        """Every file of the job, of every run of it."""
        shutil.rmtree(self.job_directory(job_id), ignore_errors=True)

    def run(self, job: Job, run_id: str | None = None) -> None:
        """Run a claimed job (claimed by `job.node`) into a folder of this run's own
        (`<job>/<run>/`): a run taken over from a node that died starts afresh and removes what
        the dead runs left, and a node that lost its claim removes only its own files, never
        those of the node that runs the job now (with `export.directory` shared)."""
        run_id = run_id or uuid.uuid4().hex[:12]
        node = job.node or self.node
        directory = self.job_directory(job.id) / run_id
        for left in self.job_directory(job.id).glob("*"):
            if left.name != run_id:  # a dead run's: its claim ran out, so it can write no more
                shutil.rmtree(left, ignore_errors=True)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        lease = int(self.settings.lease * 1_000_000)

        def keep_going(progress: str) -> bool:
            return export_jobs.renew(self.engine, job.id, node, now_micros() + lease, progress)

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
            export_jobs.finish(self.engine, job.id, node, FAILED, now, expires, None, describe(err))
            return
        now = now_micros()
        expires = now + self.settings.retention * 1_000_000
        manifest["run"] = run_id
        if not export_jobs.finish(self.engine, job.id, node, DONE, now, expires, orjson.dumps(manifest), None):
            shutil.rmtree(directory, ignore_errors=True)
