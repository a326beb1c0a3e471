"""`imaging-facade worker` processes for the distributed-sync tests and benchmark: each a real
process of its own, started as a user starts it, stopped (or killed) by its caller and never
left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "app.cli"]


class WorkerProcess:
    """One `imaging-facade worker --config <config> --concurrency <n>`, its log in a file."""

    def __init__(self, config: Path, log: Path, concurrency: int = 1):
        self.log = log
        self._out = open(log, "wb")
        self.process = subprocess.Popen(
            [*CLI, "worker", "--config", str(config), "--concurrency", str(concurrency)],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> WorkerProcess:
        """Wait until Celery says the worker consumes from the queue."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.text():
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker ended with status {self.process.returncode}:\n{self.text()}")
            time.sleep(0.1)
        raise RuntimeError(f"the worker was not ready within {timeout} s:\n{self.text()}")

    def count(self, words: str) -> int:
        return self.text().count(words)

    def kill(self) -> None:
        """SIGKILL: the worker dies mid-task, as on a lost host."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (Celery's warm shutdown), then SIGKILL if it does not end."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._out.close()

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
