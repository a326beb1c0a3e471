"""The fast tier (`pytest -m "not slow"`) needs no service: run with every service refused
(testbed/services.py), it still passes. A test that reaches PostgreSQL, Orthanc, the
authorization server or the npm package without its marker fails this run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import services

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_fast_tier_passes_with_every_service_refused(tmp_path):
    env = {
        **os.environ,
        services.ENV: "none",
        "FACADE_TEST_POSTGRES": "postgresql+psycopg://nobody@127.0.0.1:9/refused",
    }
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not slow",
            "-x",
            "--basetemp",
            str(tmp_path / "run"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1] and "deselected" in run.stdout.splitlines()[-1]
