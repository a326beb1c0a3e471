"""ndjson output files of one export (Bulk Data Access IG v2.0.0, "Bulk Data Output File
Request"): one resource per line, each file of one type, a type split over several files
beyond `max_per_file` lines. Lines are the stored JSON bytes as they are: nothing is parsed or
built per resource, and only the current file is open, so memory does not grow with the export."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import orjson


class TypeFiles:
    """The files of one resource type in `directory`: `<type>-<n>.ndjson`."""

    def __init__(self, directory: Path, rtype: str, max_per_file: int):
        self.directory = directory
        self.rtype = rtype
        self.max_per_file = max_per_file
        #: (file name, lines) of each file written, in order
        self.files: list[tuple[str, int]] = []
        self._out: BinaryIO | None = None
        self._lines = 0

    def write(self, content: bytes) -> None:
        if self._out is None or self._lines >= self.max_per_file:
            self._next()
        assert self._out is not None
        self._out.write(content)
        self._out.write(b"\n")
        self._lines += 1
        name, _ = self.files[-1]
        self.files[-1] = (name, self._lines)

    def _next(self) -> None:
        self.close()
        name = f"{self.rtype}-{len(self.files) + 1}.ndjson"
        # the owner only, as the store's own file: the lines are patient data
        fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._out = os.fdopen(fd, "wb", buffering=1 << 20)
        self._lines = 0
        self.files.append((name, 0))

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def outcome_line(code: str, diagnostics: str) -> bytes:
    """One OperationOutcome of the manifest's `error` files (IG: only OperationOutcome is supported there)."""
    return orjson.dumps(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]}
    )
