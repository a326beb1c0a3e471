"""Bulk Data export jobs on the workers of a distributed sync (`queue:` configured): the kick-off
sends a task naming the job, and an `imaging-facade worker` runs it (app/export/worker.py,
`run_job`) with the claim and lease the API nodes use without a queue, so a job is still run by
one process at a time. The Celery app's delivery rules (app/taskqueue.py) make a worker's death
cost only time: its task, acknowledged late, is handed to another worker, which takes the job
once the dead worker's claim runs out and runs it afresh.

Only the job's id crosses the broker; the job itself (its request, the client's scopes) is read
from the store, which is the truth: a task for a job that has ended does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kombu.exceptions import OperationalError

if TYPE_CHECKING:
    from celery import Celery

    from app.export.worker import ExportWorker

#: the task a kick-off sends and a worker runs: one job, by its id
EXPORT = "imaging_facade.export"


def serve_export(app: Celery, worker: ExportWorker) -> None:
    """Let `app` run export jobs with `worker` (what `imaging-facade worker` does)."""
    app.task(name=EXPORT, ignore_result=True)(worker.run_job)


def send_export(app: Celery, job_id: str) -> str | None:
    """Hand the job to the workers; why the broker did not take it, or None."""
    try:
        # no retry: a kick-off waiting on a broker that is down would hold its client for long
        app.send_task(EXPORT, args=[job_id], retry=False, ignore_result=True)
    except (OperationalError, OSError) as exc:
        return f"the broker cannot be reached: {type(exc).__name__}"
    return None
