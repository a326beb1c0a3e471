"""The README's run command on a fresh copy of the repository, as a new user would run it.

It creates its own virtual environment and installs the package from PyPI, so this is the
slowest test; it is the one that proves `git clone` + `scripts/serve` gives a server with
real studies in it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.server, pytest.mark.network]
ROOT = Path(__file__).resolve().parents[2]


def _tracked_copy(dest: Path) -> None:
    """The files a clone would have (tracked files as they are in the work tree)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def test_readme_run_command_serves_studies(tmp_path):
    repo = tmp_path / "imaging-facade"
    _tracked_copy(repo)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGING_FACADE_CONFIG", "VIRTUAL_ENV")}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        ["scripts/serve", "--port", str(port)],
        cwd=repo,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                bundle = requests.get(f"http://127.0.0.1:{port}/fhir/ImagingStudy?_count=100", timeout=2).json()
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, "scripts/serve did not serve within 10 minutes"
                time.sleep(1)
        assert bundle["total"] >= 25  # the pydicom sample files, indexed on first start
        assert (repo / ".venv/bin/imaging-facade").exists()
        first = bundle["entry"][0]["resource"]
        read = requests.get(f"http://127.0.0.1:{port}/fhir/ImagingStudy/{first['id']}")
        assert read.status_code == 200 and read.json()["id"] == first["id"]
        assert "gunicorn" in read.headers["Server"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
