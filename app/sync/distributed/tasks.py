"""The Celery app of a distributed sync: its one task, and the delivery rules that make a
worker's death cost nothing but time.

- Late acknowledgement (`task_acks_late`): a task's message is acknowledged once the task has
  run, so a worker killed mid-task (SIGKILL, a lost host) has its connection closed under it and
  the broker hands the message to another worker; `task_reject_on_worker_lost` does the same
  for a pool process that dies. The task is idempotent (app/sync/distributed/work.py), so
  running it twice stores what running it once stores.
- Prefetch 1 (`worker_prefetch_multiplier`): a worker holds no more tasks than it runs, so a
  task never waits behind a busy worker while another is idle, and a death strands nothing else.
- Durable queue, persistent messages (Celery's defaults with RabbitMQ): the tasks outlive a
  broker restart; workers reconnect and go on.
- Results in the shared PostgreSQL store (Celery's database result backend, its own tables
  `celery_taskmeta` and `celery_tasksetmeta`): a task's summary outlives the worker that wrote it
  and a broker restart, and a redelivered task writes its result over the same task id, so the
  coordinator counts each task once.

Only JSON crosses the broker: a task gets its source's name and listed studies as JSON texts,
and gives back counters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import Celery
from kombu.exceptions import OperationalError

if TYPE_CHECKING:
    from app.sync.distributed.work import Worker

#: the task a coordinator sends and a worker runs
SYNC_STUDIES = "imaging_facade.sync_studies"


def results_url(store_url: str) -> str:
    """Celery's database result backend on the store's PostgreSQL database (psycopg 3)."""
    if store_url.startswith("postgresql://"):
        store_url = "postgresql+psycopg://" + store_url[len("postgresql://") :]
    return "db+" + store_url


def make_app(broker: str, queue: str, store_url: str) -> Celery:
    """The Celery app on `broker`'s `queue`, its results in the store."""
    app = Celery("imaging_facade", broker=broker, backend=results_url(store_url), set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # a task running when the broker's connection is lost runs to its end (a thread cannot be
        # cancelled); its acknowledgement is lost with the connection, so the broker hands it out
        # again and it runs a second time, changing nothing
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        # results are read once by the coordinator, then forgotten; a day for a coordinator that died
        result_expires=86_400,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app


def serve_tasks(app: Celery, worker: Worker) -> None:
    """Let `app` run the task, in `worker`'s store (what `imaging-facade worker` does)."""
    app.task(name=SYNC_STUDIES)(worker.sync_listed)


def broker_problem(app: Celery, timeout: float = 5.0) -> str | None:
    """Why the broker cannot be reached (its address without the password), or None."""
    with app.connection_for_write() as conn:
        try:
            conn.ensure_connection(max_retries=0, timeout=timeout)
        except (OperationalError, OSError) as exc:
            return f"cannot reach the broker at {conn.as_uri()} (queue.broker): {exc}"
    return None
