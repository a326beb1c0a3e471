"""The RabbitMQ broker the distributed-sync tests and benchmark use: the machine's own
(`FACADE_TEST_BROKER`, else amqp://guest:guest@127.0.0.1:5672//), never started here.

Each test or benchmark run takes a queue of its own on it (`queue_name`), so runs sharing the
broker never take each other's tasks.

    python -m testbed.rabbitmq   # exit status 0 when the broker answers, else says why
"""

from __future__ import annotations

import os
import sys
import uuid

from kombu import Connection

from testbed import services

BROKER_URL = os.environ.get("FACADE_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")


def broker_problem(url: str = BROKER_URL) -> str | None:
    """Why the broker cannot be used, in plain words, or None."""
    try:
        with Connection(url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=0, timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure is reported as the broker being unusable
        return (
            f"RabbitMQ is needed at {Connection(url).as_uri()} (set FACADE_TEST_BROKER to another) "
            f"and does not answer: {exc}. Start it (`systemctl start rabbitmq-server`, or "
            "`rabbitmqctl start_app`)"
        )
    return None


def require_broker(url: str = BROKER_URL) -> str:
    """The broker URL, or a RuntimeError saying plainly that RabbitMQ is not up."""
    services.require("RabbitMQ")
    problem = broker_problem(url)
    if problem:
        raise RuntimeError(problem)
    return url


def queue_name(prefix: str = "facade-test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def delete_queue(name: str, url: str = BROKER_URL) -> None:
    """Remove a run's queue and what is left in it."""
    with Connection(url, connect_timeout=5) as conn:
        conn.default_channel.queue_delete(name)


if __name__ == "__main__":
    problem = broker_problem()
    print(problem or f"RabbitMQ answers at {Connection(BROKER_URL).as_uri()}", file=sys.stderr if problem else None)
    sys.exit(1 if problem else 0)
