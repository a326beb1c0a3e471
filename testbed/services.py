"""A run can forbid every service the tests and benchmarks start or reach.

With `FACADE_TEST_SERVICES=none` each of them (an Orthanc process, the authorization server
process, PostgreSQL, the npm registry) refuses at once, so a run that passes proves it needed
none of them: that is how the fast tier (`pytest -m "not slow"`) is checked.
"""

from __future__ import annotations

import os
import subprocess

ENV = "FACADE_TEST_SERVICES"


def require(service: str) -> None:
    """Refuse `service` when this run may use none."""
    if os.environ.get(ENV) == "none":
        raise RuntimeError(f"{service} is a service, and this run may use none ({ENV}=none)")


def end_process(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, and SIGKILL if `process` has not ended within `grace` seconds: a server a test
    started must not outlive it, even when it hangs in its shutdown."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
