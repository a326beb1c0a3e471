"""A fault-injecting HTTP proxy in front of a real Orthanc.

A real Orthanc cannot be told to answer 500, to hang, or to drop a connection half-way
through an answer, so the fault tests put this small proxy between the source and Orthanc.
It forwards every request unchanged unless a fault is armed; it is the only stand-in in
those tests, and everything behind it is the real archive.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


class FaultProxy:
    """`with FaultProxy(orthanc.url) as proxy:` then point a source at `proxy.url + '/dicom-web'`.

    Faults apply to requests whose path contains `only` (all requests when None):
    - `fail(n, status)`: the next n requests answer `status` without reaching Orthanc;
    - `hang(seconds)`: requests wait this long before being forwarded (0 to stop);
    - `drop(n)`: the next n answers are cut off after half their body, then the connection closes.
    """

    def __init__(self, target: str):
        self.target = target.rstrip("/")
        self.requests = 0
        self._failures: list[int] = []
        self._hang = 0.0
        self._drops = 0
        self._lock = threading.Lock()
        self.only: str | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                proxy._handle(self)

            do_POST = do_GET
            do_DELETE = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._hang = 0.0
        self._server.shutdown()
        self._server.server_close()

    # -- arming faults ---------------------------------------------------------------
    def fail(self, count: int, status: int = 500) -> None:
        with self._lock:
            self._failures += [status] * count

    def hang(self, seconds: float) -> None:
        self._hang = seconds

    def drop(self, count: int) -> None:
        with self._lock:
            self._drops += count

    def clear(self) -> None:
        with self._lock:
            self._failures, self._drops, self._hang = [], 0, 0.0

    # -- forwarding ------------------------------------------------------------------
    def _take(self, handler) -> tuple[int | None, bool]:
        with self._lock:
            self.requests += 1
            if self.only is not None and self.only not in handler.path:
                return None, False
            if self._failures:
                return self._failures.pop(0), False
            if self._drops:
                self._drops -= 1
                return None, True
            return None, False

    def _handle(self, handler) -> None:
        status, drop = self._take(handler)
        if self._hang and (self.only is None or self.only in handler.path):
            time.sleep(self._hang)
        if status is not None:
            body = b'{"error": "injected fault"}'
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
            return
        length = int(handler.headers.get("Content-Length") or 0)
        data = handler.rfile.read(length) if length else None
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length")}
        try:
            upstream = requests.request(
                handler.command, self.target + handler.path, data=data, headers=headers, timeout=60
            )
        except requests.RequestException:
            handler.send_response(502)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        body = upstream.content
        handler.send_response(upstream.status_code)
        for key, value in upstream.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        if drop:
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return
        handler.end_headers()
        handler.wfile.write(body)
