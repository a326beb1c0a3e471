"""Certificates for TLS tests, made with `cryptography`: CAs, server and client certificates.

    pki = TestPki(tmp_path)
    ca = pki.ca("Test CA")
    server = pki.issue(ca, "archive", server=True)            # for 127.0.0.1 and localhost
    client = pki.issue(ca, "facade", server=False)            # a client certificate
    expired = pki.issue(ca, "archive", server=True, expired=True)

Each issued certificate is written as PEM files: `cert` (certificate), `key` (its private key,
mode 0600) and `bundle` (certificate then key, as Orthanc's SslCertificate wants them).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: the names a server certificate is issued for (RFC 5280 subjectAltName)
LOOPBACK_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Issued:
    """One certificate and its key as PEM files."""

    name: str
    cert: Path
    key: Path
    bundle: Path
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey


class TestPki:
    """Writes CAs and the certificates they issue into `folder`."""

    __test__ = False  # not a pytest test class

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def ca(self, name: str) -> Issued:
        """A self-signed CA, valid from an hour ago for a year."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return self._write(name, certificate, key)

    def issue(self, ca: Issued, name: str, *, server: bool, expired: bool = False) -> Issued:
        """A certificate signed by `ca`: a server's (for 127.0.0.1 and localhost) or a client's;
        `expired`: its validity ended yesterday."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        start, end = (
            (now - dt.timedelta(days=30), now - dt.timedelta(days=1))
            if expired
            else (now - dt.timedelta(hours=1), now + dt.timedelta(days=30))
        )
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key()), critical=False
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        certificate = builder.sign(ca.private_key, hashes.SHA256())
        return self._write(name + ("-expired" if expired else ""), certificate, key)

    def _write(self, name: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
        stem = self.folder / name.lower().replace(" ", "-")
        cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        cert, key_path, bundle = stem.with_suffix(".pem"), stem.with_suffix(".key"), stem.with_suffix(".bundle.pem")
        cert.write_bytes(cert_pem)
        for path, data in ((key_path, key_pem), (bundle, cert_pem + key_pem)):
            path.write_bytes(data)
            os.chmod(path, 0o600)
        return Issued(name, cert, key_path, bundle, certificate, key)
