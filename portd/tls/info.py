"""What a connection knows of its TLS session: ``conn.tls`` (None for plaintext).

A handler that hands a connection's socket to something else (a child process) must
not do so for a TLS connection: the bytes on the socket are encrypted. This is how it
tells, and what it may log.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

SHORT_NAMES = {
    "commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
    "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
    "emailAddress": "emailAddress", "domainComponent": "DC",
}  # fmt: skip


class TLSInfo(NamedTuple):
    """A TLS connection's negotiated parameters and the peer's certificate, if any."""

    version: str  # TLSv1.3
    cipher: str  # TLS_AES_256_GCM_SHA384
    alpn: str | None  # the protocol ALPN chose, None without
    peer_subject: str | None  # CN=client,O=... of a client certificate (mutual TLS)
    peer_fingerprint: str | None  # its SHA-256, AB:CD:...


def tls_info(transport: Any) -> TLSInfo | None:
    """The TLSInfo of a transport, None for a plaintext one."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cipher = transport.get_extra_info("cipher") or ssl_object.cipher() or ("", "", 0)
    peercert = transport.get_extra_info("peercert") or None
    der = ssl_object.getpeercert(binary_form=True) if peercert else None
    return TLSInfo(
        ssl_object.version() or "",
        cipher[0],
        ssl_object.selected_alpn_protocol(),
        subject_text(peercert) if peercert else None,
        sha256_fingerprint(der) if der else None,
    )


def subject_text(peercert: dict[str, Any]) -> str:
    """``CN=client,O=Example`` from ``SSLSocket.getpeercert()``'s subject."""
    parts = [
        f"{SHORT_NAMES.get(name, name)}={value}"
        for rdn in peercert.get("subject", ())
        for name, value in rdn
    ]
    return ",".join(parts)


def sha256_fingerprint(der: bytes) -> str:
    """``AB:CD:...``, as ``openssl x509 -fingerprint -sha256`` prints it."""
    return ":".join(f"{byte:02X}" for byte in hashlib.sha256(der).digest())
