"""An HTTP proxy in front of a real archive: it adds latency to every request and counts the
requests in flight.

The benchmarks put it between a source and Orthanc to stand for a slow network (`delay`), and
the fault proxy of the tests builds on it (tests/support/faults.py). It forwards every request
unchanged; what is behind it is the real archive.

    with Proxy(orthanc.url, delay=0.02) as proxy:
        DicomwebSource("pacs", proxy.url + "/dicom-web")

    python -m testbed.proxy http://127.0.0.1:8042 --delay 0.02   # prints its URL, serves until stopped
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests
from requests.adapters import HTTPAdapter, Retry

#: headers about one hop (RFC 9110 7.6.1) or recomputed here, not copied from the archive's answer
_NOT_FORWARDED = frozenset({"content-length", "transfer-encoding", "connection", "content-encoding", "keep-alive"})


@dataclass
class Answer:
    """What the proxy sends back for one request."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    #: send half the body, then close the connection
    cut: bool = False


class Proxy:
    """Forwards each request to `target` after `delay` seconds.

    `requests` counts the requests received, `in_flight` those not answered yet, and
    `max_in_flight` the most that were at once (`reset_counts()` starts the counts again).
    A request is in flight from its arrival until its answer is about to be written, so a
    client that sends its next request only once it has an answer is never counted twice.
    """

    def __init__(self, target: str, delay: float = 0.0, port: int = 0, host: str = "127.0.0.1"):
        self.target = target.rstrip("/")
        self.delay = delay
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._idle: queue.SimpleQueue[requests.Session] = queue.SimpleQueue()
        self._closed = False
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: with Nagle's algorithm the body would wait
            # for the client's delayed ACK (40 ms on Linux), more than the delay being measured
            disable_nagle_algorithm = True

            def log_message(self, *args):  # keep the output clean
                pass

            def do_GET(self):
                proxy._handle(self)

            do_POST = do_GET
            do_DELETE = do_GET

        # `host`: another local address, for a client in another network namespace
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            self._closed = True  # a request still being answered closes its session itself
        while not self._idle.empty():
            self._idle.get().close()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = 0
            self.max_in_flight = self.in_flight

    # -- one request -----------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            answer = self._answer(handler)
        finally:
            with self._lock:
                self.in_flight -= 1
        self._send(handler, answer)

    def _answer(self, handler: BaseHTTPRequestHandler) -> Answer:
        """The answer to one request: the archive's, after the delay."""
        if self.delay:
            time.sleep(self.delay)
        return self._forward(handler)

    def _forward(self, handler: BaseHTTPRequestHandler) -> Answer:
        length = int(handler.headers.get("Content-Length") or 0)
        data = handler.rfile.read(length) if length else None
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length")}
        session = self._take_session()
        try:
            upstream = session.request(
                handler.command, self.target + handler.path, data=data, headers=headers, timeout=60
            )
        except requests.RequestException:
            return Answer(502)
        finally:
            self._give_back(session)
        kept = [(k, v) for k, v in upstream.headers.items() if k.lower() not in _NOT_FORWARDED]
        return Answer(upstream.status_code, kept, upstream.content)

    def _take_session(self) -> requests.Session:
        """An idle session to the archive (kept-alive connections), or a new one."""
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            session = requests.Session()
            session.trust_env = False  # straight to the target, whatever the environment's proxies
            # the archive may close a kept-alive connection as it is reused: ask again on a new one
            # (idempotent methods only, urllib3's default), rather than answer 502 for it
            session.mount("http://", HTTPAdapter(max_retries=Retry(total=2, status=0, raise_on_status=False)))
            return session

    def _give_back(self, session: requests.Session) -> None:
        """Keep the session for the next request; once the proxy is closed, close it."""
        with self._lock:
            if not self._closed:
                self._idle.put(session)
                return
        session.close()

    def _send(self, handler: BaseHTTPRequestHandler, answer: Answer) -> None:
        handler.send_response(answer.status)
        for key, value in answer.headers:
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(answer.body)))
        if answer.cut:
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(answer.body[: len(answer.body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return
        handler.end_headers()
        handler.wfile.write(answer.body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="the archive's base URL, e.g. http://127.0.0.1:8042")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Proxy(args.target, delay=args.delay, port=args.port) as proxy:
        sys.stdout.write(proxy.url + "\n")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
