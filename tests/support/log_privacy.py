"""No patient data in the logs of a whole test run.

Every log record the suite's processes emit in-process (at INFO, the level `imaging-facade`
logs at) is kept while the suite runs; at the end, the patient names and IDs of the DICOM
files the tests sync (pydicom's test data) and of the security tests' data set are looked
for in them. Any hit fails the run, naming the record's logger and the kind of value, not
the value. Under pytest-xdist each process looks at its own records and its controller
reports what they found. Served processes (gunicorn, the CLI) are checked by their own tests
(tests/security/test_served.py), which read their output.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import pydicom
import pytest

#: values too short or too common to be told from ordinary words and numbers in a log line
_MIN_LENGTH = 5
_GENERIC = {"anonymized", "anonymous", "test", "patient", "unknown", "none"}
#: the security tests' patients (tests/support/access.py): family names
_SECURITY_NAMES = ("Anders", "Baker", "Evans")


class _Keep(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.INFO)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not what this looks for
            text = str(record.msg)
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append((record.name, text))


def _patient_values() -> dict[str, str]:
    """value (lower-cased) -> what kind of value it is, from the test data's headers."""
    values = {name.lower(): "patient name (security tests)" for name in _SECURITY_NAMES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the files shipped in pydicom's package (get_testdata_files would also try downloads)
        for path in sorted(
            p for p in (Path(pydicom.__file__).parent / "data" / "test_files").rglob("*") if p.is_file()
        ):
            try:
                ds = pydicom.dcmread(
                    path, stop_before_pixels=True, force=True, specific_tags=["PatientName", "PatientID"]
                )
                name, pid = str(ds.get("PatientName", "") or ""), str(ds.get("PatientID", "") or "")
            except Exception:  # noqa: BLE001 - files pydicom cannot read carry nothing to look for
                continue
            for part in re.split(r"[\^=]", name):
                values.setdefault(part.strip().lower(), "patient name")
            values.setdefault(pid.strip().lower(), "patient ID")
    return {v: kind for v, kind in values.items() if len(v) >= _MIN_LENGTH and v not in _GENERIC}


_KEEP = _Keep()


def pytest_configure(config) -> None:
    root = logging.getLogger()
    root.addHandler(_KEEP)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)


def patient_data_hits(lines: list[tuple[str, str]], values: dict[str, str]) -> dict[tuple[str, str], int]:
    """(logger, kind of value) -> lines that hold a patient value, as a whole word.

    A value counts only where no letter or digit touches it: a numeric Patient ID such as
    99000 also turns up inside the random digits of a generated UID, which is not that patient.
    """
    alternatives = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
    pattern = re.compile(rf"(?<![0-9a-z])(?:{alternatives})(?![0-9a-z])", re.I)
    hits: dict[tuple[str, str], int] = {}
    for logger, text in lines:
        for kind in {values[match.group(0).lower()] for match in pattern.finditer(text)}:
            hits[(logger, kind)] = hits.get((logger, kind), 0) + 1
    return hits


def pytest_sessionfinish(session, exitstatus) -> None:
    hits = patient_data_hits(_KEEP.lines, _patient_values())
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist process: its controller reports for the run
        workeroutput["log_privacy_hits"] = [[logger, kind, count] for (logger, kind), count in hits.items()]
        return
    for logger, kind, count in _FROM_WORKERS:
        hits[(logger, kind)] = hits.get((logger, kind), 0) + count
    if hits:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [
            f"  logger {logger!r}: {count} line(s) with a {kind}" for (logger, kind), count in sorted(hits.items())
        ]
        message = "patient data in the log of this run:\n" + "\n".join(lines)
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = 1


#: what each pytest-xdist process found, gathered by the controller as the processes end
_FROM_WORKERS: list[tuple[str, str, int]] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    for logger, kind, count in getattr(node, "workeroutput", {}).get("log_privacy_hits", []):
        _FROM_WORKERS.append((logger, kind, count))
