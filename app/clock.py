"""The server's clock: instants as epoch microseconds, kept and shown to the millisecond.

Stored `meta.lastUpdated` carries exactly the precision it is indexed with (FHIR R4 instant),
so a client that polls with `_lastUpdated=gt<the value it saw>` never gets the same version
again. Every part of the server reads the time here.
"""

from __future__ import annotations

import time


def instant_now_ms() -> tuple[int, str]:
    """The current instant truncated to milliseconds: (epoch micros, FHIR instant string)."""
    micros = (time.time_ns() // 1_000_000) * 1000
    return micros, micros_to_instant(micros)


def micros_to_instant(micros: int) -> str:
    """A FHIR instant (UTC, milliseconds) of epoch microseconds."""
    seconds, rest = divmod(micros, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1000:03d}Z"
