"""A source's TLS keys (`tls:` on any source): the CAs it trusts and the client certificate it shows.

One set of keys serves every connection to the archive: DICOMweb and Orthanc's REST API over
HTTPS (RFC 8446/5246 with a client certificate: mutual TLS), the WADO-RS gateway's requests for
the source's images, and DIMSE over TLS (DICOM PS3.15 Annex B.1, the Basic TLS Secure Transport
Connection Profile, TLS 1.2 or later as BCP 195 asks). The files are read when the config is
loaded, so a missing, unreadable or mismatched file stops the command naming its key.

When a connection fails in TLS (a CA that does not match, an expired certificate, a client
certificate the archive refuses), `tls_reason` says why in OpenSSL's words, e.g. "certificate
verify failed: certificate has expired", so the sync's error and /health name the cause.
"""

from __future__ import annotations

import re
import ssl
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validates_schema

#: OpenSSL's alerts of a server that refused (or wanted) the client certificate (RFC 8446 6.2)
_CLIENT_CERT_ALERTS = (
    "certificate required",
    "bad certificate",
    "unknown ca",
    "certificate unknown",
    "handshake failure",
    "access denied",
)
_OPENSSL_NOISE = re.compile(r"^\[[A-Z0-9_ :]+\]\s*|\s*\(_ssl\.c:\d+\)$")


class TlsSchema(Schema):
    """The `tls:` mapping of a source."""

    class Meta:
        unknown = RAISE

    ca_bundle = fields.String(load_default=None)
    certfile = fields.String(load_default=None)
    keyfile = fields.String(load_default=None)

    @validates_schema(skip_on_field_errors=False)
    def _pair(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("keyfile") and not data.get("certfile"):
            raise ValidationError("a keyfile needs its certfile (the client certificate)", "certfile")


@dataclass(frozen=True)
class TlsSettings:
    """The checked files of a source's `tls:` (absolute paths)."""

    #: the CAs the archive's certificate must chain to; None: requests' own trust store (certifi)
    #: for HTTPS, the system's for DIMSE
    ca_bundle: Path | None = None
    #: the client certificate (PEM), with its chain; the key too if `keyfile` is not given
    certfile: Path | None = None
    keyfile: Path | None = None

    @classmethod
    def from_data(cls, data: dict, root: Path) -> TlsSettings:
        """The settings of a checked `tls:` mapping, paths relative to `root` (the config file's
        folder); ValidationError naming the key of a file that is missing, unreadable or not
        what it should be."""
        paths: dict[str, Path | None] = {}
        problems: dict[str, list[str]] = {}
        for key in ("ca_bundle", "certfile", "keyfile"):
            value = data.get(key)
            if not value:
                paths[key] = None
                continue
            path = (root / Path(value).expanduser()).resolve()
            paths[key] = path
            try:
                with path.open("rb") as handle:
                    handle.read(1)
            except OSError as exc:
                problems[key] = [f"cannot read {path}: {exc.strerror or exc}"]
        if problems:
            raise ValidationError(problems)
        settings = cls(**paths)
        settings._check_contents()
        return settings

    def _check_contents(self) -> None:
        """Load the files as a connection would, so a wrong file is found now, not at 3 a.m."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.ca_bundle is not None:
            try:
                context.load_verify_locations(cafile=str(self.ca_bundle))
            except (ssl.SSLError, ValueError) as exc:
                reason = f"{self.ca_bundle} holds no PEM CA certificate ({_short(str(exc))})"
                raise ValidationError({"ca_bundle": [reason]}) from None
        if self.certfile is not None:
            try:
                context.load_cert_chain(str(self.certfile), str(self.keyfile) if self.keyfile else None)
            except ssl.SSLError as exc:
                key = "keyfile" if self.keyfile else "certfile"
                raise ValidationError(
                    {key: [f"the client certificate and its key do not load ({_short(str(exc))})"]}
                ) from None

    # -- HTTPS (requests) ---------------------------------------------------------------
    @property
    def verify(self) -> str | bool:
        """requests' `verify`: the CA bundle, or True (its own trust store)."""
        return str(self.ca_bundle) if self.ca_bundle is not None else True

    @property
    def cert(self) -> tuple[str, str] | str | None:
        """requests' `cert`: the client certificate (and key), or None."""
        if self.certfile is None:
            return None
        return (str(self.certfile), str(self.keyfile)) if self.keyfile else str(self.certfile)

    # -- DIMSE (pynetdicom) -------------------------------------------------------------
    def ssl_context(self) -> RecordingContext:
        """A client context for DIMSE over TLS: TLS 1.2 or later, the archive's certificate
        verified against `ca_bundle` (else the system's CAs) and its host name checked."""
        context = RecordingContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_bundle is not None:
            context.load_verify_locations(cafile=str(self.ca_bundle))
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if self.certfile is not None:
            context.load_cert_chain(str(self.certfile), str(self.keyfile) if self.keyfile else None)
        return context


class _RecordingSocket(ssl.SSLSocket):
    """An SSLSocket that notes the TLS error it raises on its context, by thread: pynetdicom
    connects and reads in the association's own thread and logs the error, it does not return it."""

    def connect(self, address: Any) -> None:
        try:
            super().connect(address)
        except ssl.SSLError as exc:
            _note(self.context, exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            _note(self.context, exc)
            raise

    def sendall(self, data: Any, flags: int = 0) -> None:
        try:
            super().sendall(data, flags)
        except ssl.SSLError as exc:
            _note(self.context, exc)
            raise

    def shutdown(self, how: int) -> None:
        # pynetdicom (3.0.4) closes a socket only if its shutdown succeeds, which it does not on a
        # connection TLS failed on: close it here, so the failure leaks no descriptor
        try:
            super().shutdown(how)
        except OSError:
            self.close()
            raise


class RecordingContext(ssl.SSLContext):
    """An SSLContext whose sockets note their TLS errors: `error_in(thread)` gives the one a
    thread met (for DIMSE: the association's reading thread, `assoc.dul`)."""

    sslsocket_class = _RecordingSocket

    def error_in(self, thread: threading.Thread) -> ssl.SSLError | None:
        return _errors(self).pop(thread, None)


_lock = threading.Lock()


def _errors(context: ssl.SSLContext) -> weakref.WeakKeyDictionary[threading.Thread, ssl.SSLError]:
    with _lock:
        found = getattr(context, "_facade_errors", None)
        if found is None:
            found = weakref.WeakKeyDictionary()
            context._facade_errors = found  # type: ignore[attr-defined]
        return found


def _note(context: ssl.SSLContext, exc: ssl.SSLError) -> None:
    errors = _errors(context)
    with _lock:
        errors.setdefault(threading.current_thread(), exc)


# -- what went wrong ------------------------------------------------------------------
def find_ssl_error(exc: BaseException | None) -> ssl.SSLError | None:
    """The ssl.SSLError behind an exception (requests and urllib3 wrap it two or three deep)."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        current = todo.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        todo.extend([current.__cause__, current.__context__, getattr(current, "reason", None), *current.args])
    return None


def _short(text: str) -> str:
    """OpenSSL's message without its "[SSL: CODE]" prefix and "(_ssl.c:NNN)" suffix."""
    return _OPENSSL_NOISE.sub("", text.strip()).strip() or text


def ssl_reason(error: ssl.SSLError, *, client_cert: bool) -> str:
    """Why a TLS connection failed, in OpenSSL's words, with what it means for a client
    certificate the archive refused or wanted."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {error.verify_message}"
    text = _short(str(error))
    if "alert" in text and any(alert in text for alert in _CLIENT_CERT_ALERTS):
        return text + (
            " (the archive refused the client certificate)"
            if client_cert
            else " (the archive asks for a client certificate: set tls.certfile and tls.keyfile)"
        )
    return text


def refused(error: ssl.SSLError) -> bool:
    """Whether a TLS error is one side refusing the other's certificate (or the handshake): asking
    again gives the same answer. A connection cut mid-way (an unexpected EOF) is worth another try."""
    return isinstance(error, ssl.SSLCertVerificationError) or "alert" in str(error).lower()


def certificate_refused(exc: BaseException) -> bool:
    """Whether `exc` is, deep down, a TLS refusal (`refused`)."""
    error = find_ssl_error(exc)
    return error is not None and refused(error)


def tls_reason(exc: BaseException, *, client_cert: bool) -> str | None:
    """ "TLS failed: <why>" if TLS is behind `exc`, else None."""
    error = find_ssl_error(exc)
    return None if error is None else f"TLS failed: {ssl_reason(error, client_cert=client_cert)}"
