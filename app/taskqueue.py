"""The Celery app of `imaging-facade worker`: the delivery rules that make a worker's death cost
nothing but time, shared by the tasks it runs (a distributed sync's studies,
app/sync/distributed/tasks.py; a Bulk Data export job, app/export/tasks.py). Both the sync and
the API (which sends export tasks) build it here, so neither depends on the other.

- Late acknowledgement (`task_acks_late`): a task's message is acknowledged once the task has
  run, so a worker killed mid-task (SIGKILL, a lost host) has its connection closed under it and
  the broker hands the message to another worker; `task_reject_on_worker_lost` does the same
  for a pool process that dies. Each task is idempotent, so running it twice
  does what running it once does.
- Prefetch 1 (`worker_prefetch_multiplier`): a worker holds no more tasks than it runs, so a
  task never waits behind a busy worker while another is idle, and a death strands nothing else.
- Durable queue, persistent messages (Celery's defaults with RabbitMQ): the tasks outlive a
  broker restart; workers reconnect and go on.
- Results in the shared PostgreSQL store (Celery's database result backend, its own tables
  `celery_taskmeta` and `celery_tasksetmeta`): a task's summary outlives the worker that wrote it
  and a broker restart, and a redelivered task writes its result over the same task id, so the
  coordinator counts each task once.

Only JSON crosses the broker.
"""

from __future__ import annotations

from celery import Celery
from kombu.exceptions import OperationalError


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


def broker_problem(app: Celery, timeout: float = 5.0) -> str | None:
    """Why the broker cannot be reached (its address without the password), or None."""
    with app.connection_for_write() as conn:
        try:
            conn.ensure_connection(max_retries=0, timeout=timeout)
        except (OperationalError, OSError) as exc:
            return f"cannot reach the broker at {conn.as_uri()} (queue.broker): {exc}"
    return None
