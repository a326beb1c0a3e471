"""`imaging-facade serve` as it runs in production: gunicorn in a process of its own on a free
loopback port, with a config written the way a user writes it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
import yaml

from testbed.orthanc import free_port

CLI = str(Path(sys.executable).parent / "imaging-facade")


@contextmanager
def serving(config: dict, folder: Path, workers: int = 1) -> Iterator[str]:
    """The base URL (`http://127.0.0.1:<port>/fhir`) of a server over `config` (its `server`
    section gets the address), stopped on exit; its log is `folder/serve.log`."""
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    server = {**config.get("server", {}), "base_url": base, "host": "127.0.0.1", "port": port, "workers": workers}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({**config, "server": server}, sort_keys=False))
    with open(folder / "serve.log", "w") as log:
        proc = subprocess.Popen([CLI, "serve", "--config", str(path)], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_until_up(base, proc, folder / "serve.log")
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _wait_until_up(base: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if requests.get(f"{base}/metadata", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server did not start: {log.read_text()[-3000:]}")
