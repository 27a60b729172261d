"""Certificate, key and CA files -> SSLContexts, with errors that say which file and why.

A file is read once (a regular file of at most MAX_PEM_BYTES), checked with
``cryptography`` so a problem reads as one plain line (OpenSSL's own errors say
"PEM lib"), then loaded into the context. The digest of the bytes read lets a reload
see a renewed certificate.

:func:`client_context` builds the context of a TLS client (``portd connect --tls``,
and any handler that originates TLS to an upstream, such as a forward proxy).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from portd.errors import OptionError, TLSConfigError

if TYPE_CHECKING:  # settings' dataclass costs start-up time portd listen --tls need not pay
    from portd.tls.settings import TLSConfig

MAX_PEM_BYTES = 1 << 20  # a chain of a dozen certificates is ~20 KiB
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def config_label(key: str, path: str) -> str:
    """How a config key names its file in messages: ``tls_cert = "/etc/x.pem"``."""
    return f"{key} = {_quote(path)}"


def option_label(flag: str, path: str) -> str:
    """How a command-line option names its file: ``--cert /etc/x.pem``."""
    return f"{flag} {path}"


def read_pem(where: str, path: str) -> bytes:
    """The bytes of a PEM file; ``where`` names it in messages.

    Raises:
        OptionError: ``where: cannot read: <why> (errno N)``, or not a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:
        raise OptionError(f"{where}: cannot read: {_why(exc)}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OptionError(f"{where}: cannot read: not a regular file")
    with os.fdopen(fd, "rb") as file:
        try:
            data = file.read(MAX_PEM_BYTES + 1)
        except OSError as exc:
            raise OptionError(f"{where}: cannot read: {_why(exc)}") from None
    if len(data) > MAX_PEM_BYTES:
        raise OptionError(f"{where}: larger than {MAX_PEM_BYTES >> 20} MiB: not a PEM file")
    return data


def _why(exc: OSError | ValueError) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{exc.strerror} (errno {exc.errno})"
    return str(exc)


def _quote(path: str) -> str:
    import json

    return json.dumps(path)


def check_pair(cert_where: str, cert_pem: bytes, where: str, key_pem: bytes) -> Any:
    """Parse the chain and the key and check they belong together (``cert_where`` and
    ``where`` name the two files in messages).

    Returns:
        The leaf certificate (a cryptography x509.Certificate).

    Raises:
        OptionError: not PEM, an encrypted key, or a key that does not match.
    """
    from cryptography.hazmat.primitives import serialization

    chain = parse_certificates(cert_where, cert_pem)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise OptionError(f"{where}: the key is encrypted; portd needs it unencrypted "
                          "(openssl pkey -in KEY -out PLAIN.pem)") from None  # fmt: skip
    except ValueError as exc:
        raise OptionError(f"{where}: not a PEM private key ({_first_line(exc)})") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        raise OptionError(
            f"{where}: does not match the certificate of {cert_where} "
            f"({chain[0].subject.rfc4514_string() or 'no subject'})"
        )
    return chain[0]


def parse_certificates(where: str, pem: bytes) -> list[Any]:
    """The certificates of a PEM file, in order.

    Raises:
        OptionError: the file holds no PEM certificate (or a damaged one).
    """
    from cryptography import x509

    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise OptionError(
            f"{where}: no PEM certificate could be read ({_first_line(exc)})"
        ) from None
    return certificates


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def validity_warnings(where: str, cert: Any, now: datetime.datetime | None = None) -> list[str]:
    """A line when the certificate has expired or is not valid yet (serving goes on)."""
    now = now or datetime.datetime.now(datetime.UTC)
    after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
    if after < now:
        return [f"{where}: the certificate expired on {after:%Y-%m-%d %H:%M:%S} UTC; "
                "clients will refuse it"]  # fmt: skip
    if before > now:
        return [f"{where}: the certificate is not valid before {before:%Y-%m-%d %H:%M:%S} UTC; "
                "clients will refuse it"]  # fmt: skip
    return []


def load_server_context(
    cert: str,
    key: str,
    client_ca: str = "",
    *,
    min_version: str = "1.2",
    alpn: Sequence[str] = (),
    handshake_timeout_s: float = 10.0,
    plaintext_response: str = "close",
) -> TLSConfig:
    """A listener's TLSConfig with its server context, from files.

    Raises:
        OptionError: a file that cannot be read or loaded; the message names its key,
            its path and the reason.
    """
    from portd.tls.settings import TLSConfig

    cert_where, key_where = config_label("tls_cert", cert), config_label("tls_key", key)
    cert_pem, key_pem = read_pem(cert_where, cert), read_pem(key_where, key)
    leaf = check_pair(cert_where, cert_pem, key_where, key_pem)
    ca_pem = b""
    ca_where = config_label("tls_client_ca", client_ca)
    if client_ca:
        ca_pem = read_pem(ca_where, client_ca)
        parse_certificates(ca_where, ca_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = VERSIONS[min_version]
    _load_chain(context, cert, key, cert_where)
    if client_ca:
        try:
            context.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
        except ssl.SSLError as exc:
            raise OptionError(f"{ca_where}: {exc.reason or exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        context.set_alpn_protocols(list(alpn))
    digest = hashlib.sha256(b"\0".join((cert_pem, key_pem, ca_pem))).hexdigest()
    return TLSConfig(
        cert, key, client_ca, min_version, tuple(alpn), handshake_timeout_s, plaintext_response,
        digest, context, tuple(validity_warnings(cert_where, leaf)),
    )  # fmt: skip


def _load_chain(context: ssl.SSLContext, cert: str, key: str, where: str) -> None:
    def no_password() -> str:
        raise OptionError(f"{where}: its key is encrypted")  # never prompt on a terminal

    try:
        context.load_cert_chain(cert, key, password=no_password)
    except (ssl.SSLError, OSError) as exc:  # the files changed since they were checked
        reason = getattr(exc, "reason", None) or _first_line(exc)
        raise OptionError(f"{where}: cannot be loaded: {reason}") from None


def load_pair(context: ssl.SSLContext, cert: str, key: str) -> Any:
    """Load ``--cert``/``--key`` files into ``context``; returns the leaf certificate.

    Raises:
        OptionError: either file cannot be read or loaded, or they do not match.
    """
    cert_where, key_where = option_label("--cert", cert), option_label("--key", key)
    leaf = check_pair(cert_where, read_pem(cert_where, cert), key_where, read_pem(key_where, key))
    _load_chain(context, cert, key, cert_where)
    return leaf


def client_context(
    *,
    ca_file: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    verify: bool = True,
    min_version: str = "1.2",
    alpn: Sequence[str] = (),
) -> ssl.SSLContext:
    """The context of a TLS client: verifies the server against the system's trust
    store (or ``ca_file``) and its name, unless ``verify`` is False.

    Args:
        ca_file: PEM CA certificates to trust instead of the system's.
        cert, key: a client certificate and its key (mutual TLS); ``key`` defaults
            to ``cert`` (a PEM holding both).
        verify: False skips every check of the server (``--insecure``).
        min_version: "1.2" or "1.3".
        alpn: protocols to offer.

    Raises:
        TLSConfigError: a file that cannot be read or loaded (one line, exit 78).
    """
    try:
        context = ssl.create_default_context()
        if ca_file:
            where = option_label("--ca", ca_file)
            pem = read_pem(where, ca_file)
            parse_certificates(where, pem)
            context = ssl.create_default_context(cadata=pem.decode("ascii", "replace"))
        if cert:
            load_pair(context, cert, key or cert)
    except OptionError as exc:
        raise TLSConfigError(str(exc)) from None
    context.minimum_version = VERSIONS.get(min_version, ssl.TLSVersion.TLSv1_2)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context
