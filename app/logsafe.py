"""Describe an exception for the log without its message.

Exception messages can quote the data being processed (a patient name in a ValueError, query
parameters in a database error); the log gets the type and where it happened, never the data.
"""

from __future__ import annotations

import traceback
from pathlib import Path


def describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    path = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames[-3:]))
    return f"{type(exc).__name__} at {path}"
