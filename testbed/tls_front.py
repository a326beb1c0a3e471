"""HAProxy (the Debian package) terminating TLS in front of a plain TCP service, for HTTPS tests.

Debian 12's Orthanc 1.10 cannot serve HTTPS itself: its web server (civetweb 1.15, which loads
OpenSSL at run time) looks up `SSL_get_peer_certificate`, which OpenSSL 3 no longer exports, and
crashes on the first HTTPS connection. An archive's HTTPS is then HAProxy's, as in the many
deployments with a TLS proxy in front of the PACS: its certificate (`bundle`: certificate and key
in one PEM), and with `client_ca` the client certificates it requires (`verify required`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from testbed.orthanc import free_port
from testbed.services import end_process


def front_config(port: int, target: int, bundle: Path, client_ca: Path | None) -> str:
    verify = f" ca-file {client_ca} verify required" if client_ca is not None else ""
    return "\n".join(
        [
            "global",
            "    ssl-default-bind-options ssl-min-ver TLSv1.2",
            "defaults",
            "    mode tcp",
            "    timeout connect 5s",
            "    timeout client 60s",
            "    timeout server 60s",
            "listen tls",
            f"    bind 127.0.0.1:{port} ssl crt {bundle}{verify}",
            f"    server backend 127.0.0.1:{target}",
            "",
        ]
    )


class TlsFront:
    """One HAProxy process: TLS on 127.0.0.1:`port`, the plain service behind it on `target`."""

    def __init__(self, workdir: Path, target: int, bundle: Path, client_ca: Path | None = None):
        binary = shutil.which("haproxy")
        if binary is None:
            raise RuntimeError("HAProxy is needed (Debian package haproxy; scripts/setup.sh --test installs it)")
        self.port = free_port()
        self.config = workdir / "tls-front.cfg"
        self.config.write_text(front_config(self.port, target, bundle, client_ca))
        self.log_path = workdir / "tls-front.log"
        self._log = open(self.log_path, "w")
        check = subprocess.run([binary, "-c", "-f", str(self.config)], capture_output=True, text=True)
        if check.returncode != 0:
            self._log.close()
            raise RuntimeError(f"HAProxy refuses {self.config}: {check.stdout}{check.stderr}")
        # -db: stay in the foreground, the test's child
        self.proc = subprocess.Popen(
            [binary, "-db", "-f", str(self.config)], stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"HAProxy did not start: {self.log_path.read_text()[-2000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        end_process(self.proc)
        self._log.close()
