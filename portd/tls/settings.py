"""The ``tls_*`` listener keys, and the TLS part of a validated listener (TLSConfig).

Declared here, like the socket keys in portd.endpoints.settings, so the listener table
accepts them; they apply to stream listeners (TCP and unix stream) only. Building the
TLSConfig reads the files (portd.tls.context), so ``portd check`` refuses what
``portd serve`` would: a missing file, a key that does not match, a bad version.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from portd.errors import OptionError
from portd.options import Option

VERSIONS = ("1.2", "1.3")
PLAINTEXT_RESPONSES = ("close", "400")


def parse_alpn(value: Any) -> tuple[str, ...]:
    """``["h2", "http/1.1"]`` -> the protocols, in preference order.

    Raises:
        OptionError: not a list of 1-255 byte printable ASCII names.
    """
    if not isinstance(value, list) or not all(
        isinstance(item, str) and 0 < len(item) < 256 and item.isascii() and item.isprintable()
        for item in value
    ):
        raise OptionError('expected a list of protocol names, e.g. ["http/1.1"]')
    return tuple(value)


TLS_OPTIONS = (
    Option("tls_cert", str, "", "PEM certificate (a chain is sent whole); turns TLS on"),
    Option("tls_key", str, "", "PEM private key of tls_cert (unencrypted)"),
    Option("tls_client_ca", str, "", "PEM CA: clients must present a certificate it signed"),
    Option("tls_min_version", str, "1.2", "oldest TLS version accepted", choices=VERSIONS),
    Option("tls_alpn", list, None, "ALPN protocols offered (default: the handler's)",
           convert=parse_alpn),
    Option("tls_handshake_timeout_s", float, 10.0, "a handshake must complete within this",
           minimum=0.001, maximum=3600),
    Option("tls_plaintext_response", str, "close", 'plaintext HTTP on a TLS port: "close", '
           'or "400" (nginx\'s "plain HTTP request was sent to HTTPS port")',
           choices=PLAINTEXT_RESPONSES),
)  # fmt: skip
TLS_KEYS = frozenset(option.name for option in TLS_OPTIONS)
FILE_KEYS = ("tls_cert", "tls_key", "tls_client_ca")


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """A listener's TLS: its settings, the files' contents (by digest: a reload that
    finds a renewed file sees a changed listener) and the loaded server context."""

    cert: str
    key: str
    client_ca: str
    min_version: str
    alpn: tuple[str, ...]
    handshake_timeout_s: float
    plaintext_response: str
    digest: str  # sha256 over the files' bytes
    context: Any = field(compare=False, repr=False)  # ssl.SSLContext
    warnings: tuple[str, ...] = field(default=(), compare=False)  # expiry, said at start


def build_tls(
    values: Mapping[str, Any], table: Mapping[str, Any], default_alpn: tuple[str, ...]
) -> TLSConfig | None:
    """The listener's TLSConfig, None when it sets no tls_* key.

    Raises:
        OptionError: tls_cert without tls_key (or other tls_* keys without both), or a
            file that cannot be loaded (the message names the key, the path and why).
    """
    given = TLS_KEYS & set(table)
    if not given:
        return None
    if not (values["tls_cert"] and values["tls_key"]):
        others = ", ".join(sorted(given))
        raise OptionError(f"{others}: TLS needs both tls_cert and tls_key")
    from portd.tls.context import load_server_context

    alpn = values["tls_alpn"] if values["tls_alpn"] is not None else default_alpn
    return load_server_context(
        values["tls_cert"], values["tls_key"], values["tls_client_ca"],
        min_version=values["tls_min_version"], alpn=alpn,
        handshake_timeout_s=values["tls_handshake_timeout_s"],
        plaintext_response=values["tls_plaintext_response"],
    )  # fmt: skip
