"""The task of a distributed sync on the Celery app of app/taskqueue.py (its delivery rules:
late acknowledgement, prefetch 1, results in the store). The task is idempotent
(app/sync/distributed/work.py), so running it twice stores what running it once stores. Only
JSON crosses the broker: a task gets its source's name and listed studies as JSON texts, and
gives back counters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import Celery

from app.taskqueue import broker_problem, make_app, results_url

if TYPE_CHECKING:
    from app.sync.distributed.work import Worker

__all__ = ["SYNC_STUDIES", "broker_problem", "make_app", "results_url", "serve_tasks"]

#: the task a coordinator sends and a worker runs
SYNC_STUDIES = "imaging_facade.sync_studies"


def serve_tasks(app: Celery, worker: Worker) -> None:
    """Let `app` run the task, in `worker`'s store (what `imaging-facade worker` does)."""
    app.task(name=SYNC_STUDIES)(worker.sync_listed)
