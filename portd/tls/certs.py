"""Certificates made with ``cryptography``: a local CA, leaves it issues, and ephemeral
self-signed ones, all ECDSA P-256 (what browsers, curl and OpenSSL all take, and cheap
to sign with), plus the SHA-256 fingerprint people pin.

Used by ``portd cert`` (files, like mkcert), ``portd listen --tls`` (an ephemeral
certificate) and the testing API (a per-session test CA and its fault certificates).
Imported only when one of those runs: ``cryptography`` costs tens of milliseconds.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ONE_DAY = datetime.timedelta(days=1)
CA_LIFETIME = datetime.timedelta(days=3650)
LEAF_LIFETIME = datetime.timedelta(days=825)  # the longest leaf Apple's clients accept
CLOCK_SKEW = datetime.timedelta(minutes=5)  # valid a little before now: clocks disagree


class Issued(NamedTuple):
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes


class Authority:
    """A certificate authority that issues leaves (server or client certificates)."""

    def __init__(
        self, name: str = "portd local CA", *, lifetime: datetime.timedelta = CA_LIFETIME
    ) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), False)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes) -> Authority:
        """An existing CA (``portd cert`` run again in the same directory).

        Raises:
            ValueError: not a PEM certificate and EC key that belong together.
        """
        authority = cls.__new__(cls)
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key is not an EC key")
        authority.key = key
        authority.cert = x509.load_pem_x509_certificate(cert_pem)
        authority.name = authority.cert.subject
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if authority.cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            raise ValueError("the CA key does not match the CA certificate")
        return authority

    def key_pem(self) -> bytes:
        """The CA's private key, PEM (keep it private: it signs anything)."""
        return key_pem(self.key)

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, PEM (what clients trust)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        names: Sequence[str],
        *,
        client: bool = False,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> Issued:
        """A leaf for ``names`` (DNS names or IP addresses), signed by this CA.

        Args:
            client: a client certificate (clientAuth) instead of a server one.
            not_before, not_after: its validity (default: from 5 minutes ago, 825 days).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = _leaf_builder(names, key, client=client)
        cert = (
            builder.issuer_name(self.name)
            .not_valid_before(not_before or now - CLOCK_SKEW)
            .not_valid_after(not_after or now + LEAF_LIFETIME)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return Issued(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def self_signed(names: Sequence[str], lifetime: datetime.timedelta = ONE_DAY) -> Issued:
    """A self-signed leaf for ``names`` (``portd listen --tls`` without --cert)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        _leaf_builder(names, key, client=False)
        .issuer_name(_subject(names))
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def _leaf_builder(
    names: Sequence[str], key: ec.EllipticCurvePrivateKey, *, client: bool
) -> x509.CertificateBuilder:
    if not names:
        raise ValueError("a certificate needs at least one name")
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    return (
        x509.CertificateBuilder()
        .subject_name(_subject(names))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.SubjectAlternativeName([general_name(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )


def _subject(names: Sequence[str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])


def general_name(name: str) -> x509.GeneralName:
    """An IP address entry for an address (brackets allowed), else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """An unencrypted PKCS#8 PEM private key (what nginx, curl and Python all read)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pem_fingerprint(pem: bytes) -> str:
    """The SHA-256 fingerprint (``AB:CD:...``) of the first certificate of a PEM text."""
    from portd.tls.info import sha256_fingerprint

    cert = x509.load_pem_x509_certificate(pem)
    return sha256_fingerprint(cert.public_bytes(serialization.Encoding.DER))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
