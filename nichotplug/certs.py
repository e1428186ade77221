"""TLS material for development, tests and the self-managed certificate mode.

Produces a CA and a serving certificate signed by it, as PEM bytes, with the
file names of a Kubernetes TLS Secret (``ca.crt``, ``tls.crt``, ``tls.key``).
Pure computation: writing files is the caller's business, except in
:func:`write_bundle`, which the ``nichotplug certs`` command uses.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"


@dataclass(frozen=True)
class CertBundle:
    """A CA certificate and a serving certificate/key pair signed by it (PEM)."""

    ca_cert_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    ca_key_pem: bytes = b""

    def not_after(self) -> datetime.datetime:
        """When the serving certificate expires (UTC)."""
        return x509.load_pem_x509_certificate(self.cert_pem).not_valid_after_utc


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _subject_alt_names(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    entries += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    return x509.SubjectAlternativeName(entries)


# How long a CA made here is valid; a serving certificate it signs cannot outlive it.
CA_DAYS = 3650


def make_ca(common_name: str = "nichotplug-ca", *, days: int = CA_DAYS) -> tuple[bytes, bytes]:
    """A self-signed CA: (certificate PEM, key PEM)."""
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = _now() - datetime.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _load_ca(ca_cert_pem: bytes, ca_key_pem: bytes) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an EC private key")
    return ca_cert, ca_key


def make_serving_cert(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    *,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    valid_for: datetime.timedelta = datetime.timedelta(days=365),
) -> tuple[bytes, bytes]:
    """A serving certificate for the given names, signed by the CA: (cert PEM, key PEM)."""
    if not dns_names and not ip_addresses:
        raise ValueError("a serving certificate needs at least one DNS name or IP address")
    # Clients check the SANs; the CN only labels the certificate and may hold at most 64 characters.
    common_name = (dns_names[0] if dns_names else ip_addresses[0])[:64]
    return _signed_leaf(ca_cert_pem, ca_key_pem, [x509.NameAttribute(NameOID.COMMON_NAME, common_name)],
                        ExtendedKeyUsageOID.SERVER_AUTH, valid_for, _subject_alt_names(dns_names, ip_addresses))


def _signed_leaf(
    ca_cert_pem: bytes, ca_key_pem: bytes, subject: list[x509.NameAttribute[str]], usage: x509.ObjectIdentifier,
    valid_for: datetime.timedelta, alt_names: x509.SubjectAlternativeName | None = None,
) -> tuple[bytes, bytes]:
    """A fresh key and a non-CA certificate for it, signed by the CA, for ``usage`` (server or client)."""
    ca_cert, ca_key = _load_ca(ca_cert_pem, ca_key_pem)
    key = _new_key()
    start = _now() - datetime.timedelta(minutes=5)  # tolerate clocks a little behind ours
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + valid_for)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if alt_names is not None:
        builder = builder.add_extension(alt_names, critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def make_client_cert(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    *,
    common_name: str,
    organizations: Sequence[str] = (),
    valid_for: datetime.timedelta = datetime.timedelta(days=365),
) -> tuple[bytes, bytes]:
    """A TLS client certificate signed by the CA: (cert PEM, key PEM).

    Kubernetes reads the CN as the user name and each O as a group; a front-proxy (aggregation
    layer) client is recognised by its CN.
    """
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]
    subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in organizations]
    return _signed_leaf(ca_cert_pem, ca_key_pem, subject, ExtendedKeyUsageOID.CLIENT_AUTH, valid_for)


def make_bundle(
    *,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    valid_for: datetime.timedelta = datetime.timedelta(days=365),
) -> CertBundle:
    """A fresh CA and a serving certificate signed by it."""
    ca_cert, ca_key = make_ca()
    cert, key = make_serving_cert(
        ca_cert, ca_key, dns_names=dns_names, ip_addresses=ip_addresses, valid_for=valid_for
    )
    return CertBundle(ca_cert_pem=ca_cert, cert_pem=cert, key_pem=key, ca_key_pem=ca_key)


def server_ssl_context(bundle: CertBundle) -> ssl.SSLContext:
    """A server-side TLS context presenting the bundle's certificate (``ssl`` reads keys only from
    files, so they pass through a private temporary folder)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as folder:
        cert, key = Path(folder, CERT_FILE), Path(folder, KEY_FILE)
        cert.write_bytes(bundle.cert_pem)
        key.write_bytes(bundle.key_pem)
        context.load_cert_chain(cert, key)
    return context


def write_bundle(bundle: CertBundle, out_dir: Path) -> dict[str, Path]:
    """Write ca.crt, tls.crt and tls.key into out_dir (the key readable by the owner only)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {CA_FILE: out_dir / CA_FILE, CERT_FILE: out_dir / CERT_FILE, KEY_FILE: out_dir / KEY_FILE}
    for name, content in ((CA_FILE, bundle.ca_cert_pem), (CERT_FILE, bundle.cert_pem)):
        atomic_write(paths[name], content, mode=0o644)
    atomic_write(paths[KEY_FILE], bundle.key_pem, mode=0o600)
    return paths


def atomic_write(path: Path, content: bytes, *, mode: int) -> None:
    """Write ``content`` to ``path`` with ``mode``: to a temporary file first, then renamed.

    A reader watching the file (the TLS reloader) never sees half a PEM.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    os.replace(tmp, path)
