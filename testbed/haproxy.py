"""HAProxy (the Debian package) as the load balancer in front of API nodes, run from the sample
config the documentation shows (docs/haproxy.cfg): only its frontend port and its servers are
the test's own. Test-only additions: each answer names the node that gave it (`X-Served-By`),
a stats socket counts retries, and TCP forwards let hosts in network namespaces reach services
of this machine that listen on loopback (PostgreSQL, the test authorization server)."""

from __future__ import annotations

import csv
import io
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

from testbed.orthanc import free_port
from testbed.services import end_process

SAMPLE = Path(__file__).resolve().parents[1] / "docs" / "haproxy.cfg"
#: the response header that names the node (test-only)
SERVED_BY = "X-Served-By"


def config_text(
    port: int, servers: list[tuple[str, str, int]], forwards: list[tuple[str, int, int]], stats: Path
) -> str:
    """The sample config with the frontend on 127.0.0.1:`port`, `servers` (name, address,
    port) as the backend's, a TCP forward from each (address, port) to 127.0.0.1:port, and
    the stats socket at `stats`."""
    out: list[str] = []
    placed = False
    for line in SAMPLE.read_text().splitlines():
        if line == "global":
            out += [line, f"    stats socket {stats} mode 600 level admin"]
        elif re.match(r"\s+bind ", line):
            out.append(f"    bind 127.0.0.1:{port}")
        elif re.match(r"\s+server ", line):
            if not placed:
                out.extend(f"    server {name} {address}:{sport}" for name, address, sport in servers)
                out.append(f'    http-response set-header {SERVED_BY} "%s"')
                placed = True
        else:
            out.append(line)
    assert placed, f"{SAMPLE} names no server"
    for index, (address, fport, target) in enumerate(forwards):
        out += ["", f"listen forward{index}", "    mode tcp", f"    bind {address}:{fport}"]
        out += ["    timeout client 1h", "    timeout server 1h", f"    server local 127.0.0.1:{target}"]
    return "\n".join(out) + "\n"


class HAProxy:
    def __init__(
        self,
        workdir: Path,
        servers: list[tuple[str, str, int]],
        forwards: list[tuple[str, int, int]] | None = None,
    ):
        binary = shutil.which("haproxy")
        if binary is None:
            raise RuntimeError("HAProxy is needed (Debian package haproxy; scripts/setup.sh --test installs it)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "haproxy.cfg"
        self.stats_socket = workdir / "haproxy.sock"
        self.config.write_text(config_text(self.port, servers, forwards or [], self.stats_socket))
        self.log_path = workdir / "haproxy.log"
        self._log = open(self.log_path, "w")
        check = subprocess.run([binary, "-c", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"HAProxy refuses {self.config}: {check.stdout}{check.stderr}")
        # -db: stay in the foreground, the test's child
        self.proc = subprocess.Popen(
            [binary, "-db", "-f", str(self.config)], stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.time() + 20
        while True:
            try:
                requests.get(f"{self.url}/health", timeout=1)
                return
            except requests.RequestException:  # not listening yet, or its first check still slow
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"HAProxy did not start: {self.log_path.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        """`show stat` of the stats socket: (proxy, server) -> its counters (`wretr`: retries,
        `wredis`: redispatches, `status`: UP/DOWN...)."""
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(self.stats_socket))
            conn.sendall(b"show stat\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        rows = list(csv.reader(io.StringIO(data.decode().lstrip("# "))))
        header = rows[0]
        return {(row[0], row[1]): dict(zip(header, row, strict=False)) for row in rows[1:] if len(row) > 1}

    def stop(self) -> None:
        end_process(self.proc)
        self._log.close()
