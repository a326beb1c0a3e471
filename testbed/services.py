"""A run can forbid every service the tests and benchmarks start or reach.

With `FACADE_TEST_SERVICES=none` each of them (an Orthanc process, the authorization server
process, PostgreSQL, the npm registry) refuses at once, so a run that passes proves it needed
none of them: that is how the fast tier (`pytest -m "not slow"`) is checked.
"""

from __future__ import annotations

import os

ENV = "FACADE_TEST_SERVICES"


def require(service: str) -> None:
    """Refuse `service` when this run may use none."""
    if os.environ.get(ENV) == "none":
        raise RuntimeError(f"{service} is a service, and this run may use none ({ENV}=none)")
