"""The RabbitMQ broker the distributed-sync tests and benchmark use: the machine's own
(`FACADE_TEST_BROKER`, else amqp://guest:guest@127.0.0.1:5672//), never started here.

Each test or benchmark run takes a queue of its own on it (`queue_name`), so runs sharing the
broker never take each other's tasks. A test that stops the broker would break any other using
it at the time, in another pytest-xdist process or another run on the machine: those that use it
hold `BROKER_LOCK` shared, the one that restarts it holds it alone (an flock on a file of the
machine's temporary directory).

    python -m testbed.rabbitmq   # exit status 0 when the broker answers, else says why
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kombu import Connection

from testbed import services

BROKER_URL = os.environ.get("FACADE_TEST_BROKER", "amqp://guest:guest@127.0.0.1:5672//")


class BrokerLock:
    """Shared by the tests using the machine's RabbitMQ, exclusive for one that restarts it."""

    path = Path(tempfile.gettempdir()) / "imaging-facade-rabbitmq.lock"

    def __init__(self) -> None:
        self._fd: int | None = None
        self._users = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        if self._users == 0:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(self._fd, fcntl.LOCK_SH)
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0 and self._fd is not None:
                os.close(self._fd)  # the lock goes with it
                self._fd = None

    @contextmanager
    def alone(self) -> Iterator[None]:
        """Within `shared`: wait until no other process uses the broker, and keep it so."""
        assert self._fd is not None, "alone() is for a test that holds the broker shared"
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # the shared lock of this file becomes exclusive
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_SH)


#: this process's hold on the broker
BROKER_LOCK = BrokerLock()


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
