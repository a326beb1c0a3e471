"""A fault-injecting HTTP proxy in front of a real Orthanc.

A real Orthanc cannot be told to answer 500, to hang, or to drop a connection half-way
through an answer, so the fault tests put this small proxy between the source and Orthanc.
It forwards every request unchanged unless a fault is armed; it is the only stand-in in
those tests, and everything behind it is the real archive. It is the forwarding proxy of
testbed/proxy.py with faults added, so it also counts the requests in flight.

`AssociationRelay` does the counting for DICOM associations: a TCP relay in front of the
archive's DICOM port.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time

from testbed.proxy import Answer, Proxy


class FaultProxy(Proxy):
    """`with FaultProxy(orthanc.url) as proxy:` then point a source at `proxy.url + '/dicom-web'`.

    Faults apply to requests whose path contains `only` (all requests when None):
    - `fail(n, status, retry_after)`: the next n requests answer `status` (with that Retry-After
      header, if given) without reaching Orthanc;
    - `hang(seconds)`: requests wait this long before being forwarded (0 to stop);
    - `drop(n)`: the next n answers are cut off after half their body, then the connection closes.
    `delay` (testbed/proxy.py) slows every request, `only` or not; `requests`, `in_flight` and
    `max_in_flight` count them.
    """

    def __init__(self, target: str, delay: float = 0.0):
        super().__init__(target, delay=delay)
        self._failures: list[tuple[int, int | None]] = []
        self._hang = 0.0
        self._drops = 0
        self.only: str | None = None
        #: when each injected failure was answered (time.monotonic())
        self.failed_at: list[float] = []
        #: when each request arrived (time.monotonic())
        self.arrivals: list[float] = []

    def __exit__(self, *exc) -> None:
        self._hang = 0.0
        super().__exit__(*exc)

    # -- arming faults ---------------------------------------------------------------
    def fail(self, count: int, status: int = 500, retry_after: int | None = None) -> None:
        with self._lock:
            self._failures += [(status, retry_after)] * count

    def hang(self, seconds: float) -> None:
        self._hang = seconds

    def drop(self, count: int) -> None:
        with self._lock:
            self._drops += count

    def clear(self) -> None:
        with self._lock:
            self._failures, self._drops, self._hang = [], 0, 0.0

    # -- answering -------------------------------------------------------------------
    def _take(self, handler) -> tuple[tuple[int, int | None] | None, bool]:
        with self._lock:
            self.arrivals.append(time.monotonic())
            if self.only is not None and self.only not in handler.path:
                return None, False
            if self._failures:
                return self._failures.pop(0), False
            if self._drops:
                self._drops -= 1
                return None, True
            return None, False

    def _answer(self, handler) -> Answer:
        failure, drop = self._take(handler)
        if self._hang and (self.only is None or self.only in handler.path):
            time.sleep(self._hang)
        if failure is not None:
            status, retry_after = failure
            headers = [("Content-Type", "application/json")]
            if retry_after is not None:
                headers.append(("Retry-After", str(retry_after)))
            with self._lock:
                self.failed_at.append(time.monotonic())
            return Answer(status, headers, b'{"error": "injected fault"}')
        answer = super()._answer(handler)
        answer.cut = drop
        return answer


#: PDUs from the archive that end an association: A-ASSOCIATE-RJ, A-RELEASE-RP, A-ABORT (PS3.8 9.3.1)
_ENDING_PDUS = frozenset({0x03, 0x06, 0x07})


class AssociationRelay:
    """A TCP relay in front of an archive's DICOM port that counts the associations open at once.

    `with AssociationRelay(orthanc.dicom_port) as relay:` then point a DIMSE source at
    `127.0.0.1:relay.port`. An association is open from its connection until the archive's
    answer that ends it passes the relay (read PDU by PDU), or a side closes: the requestor
    cannot open its next association before that, so one requestor is never counted twice.
    `connect_delay` holds each connection before it reaches the archive, so associations asked
    for at about the same time are open at the same time. `open_now`, `max_open` and
    `associations` count them.
    """

    def __init__(self, target_port: int, connect_delay: float = 0.0):
        self.target_port = target_port
        self.connect_delay = connect_delay
        self.open_now = 0
        self.max_open = 0
        self.associations = 0
        self._lock = threading.Lock()
        relay = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                relay._serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def __enter__(self) -> AssociationRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self.associations += 1
            self.open_now += 1
            self.max_open = max(self.max_open, self.open_now)
        ended = threading.Event()

        def end() -> None:
            with self._lock:
                if not ended.is_set():
                    ended.set()
                    self.open_now -= 1

        time.sleep(self.connect_delay)
        try:
            with socket.create_connection(("127.0.0.1", self.target_port)) as upstream:
                requests_in = threading.Thread(target=_copy, args=(client, upstream), daemon=True)
                requests_in.start()
                _copy_pdus(upstream, client, end)
                end()
                client.shutdown(socket.SHUT_RDWR)
                requests_in.join(timeout=10)
        except OSError:
            pass  # a side went away: the association is over either way
        finally:
            end()


def _copy(source: socket.socket, target: socket.socket) -> None:
    """Bytes from `source` to `target` until `source` closes."""
    try:
        while data := source.recv(65536):
            target.sendall(data)
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the other direction closed both


def _copy_pdus(source: socket.socket, target: socket.socket, end) -> None:
    """PDUs from `source` to `target`; `end()` before passing one that ends the association."""
    while True:
        header = _read(source, 6)  # PDU type, reserved, 4-byte big-endian length (PS3.8 9.3.1)
        if header is None:
            return
        body = _read(source, int.from_bytes(header[2:6], "big"))
        if body is None:
            return
        if header[0] in _ENDING_PDUS:
            end()
        target.sendall(header + body)


def _read(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
