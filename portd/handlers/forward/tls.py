"""TLS to the upstream: the ``upstream_tls*`` keys of a forward and its client context.

A forward terminates TLS like any stream listener (the ``tls_*`` keys, a layer on its
endpoint); these keys make it originate TLS to its upstream, verified against the
system's trust store or ``upstream_ca``, by the upstream's host name or
``upstream_servername`` (also the SNI it sends). The files are read when the config is
checked, so ``portd check`` refuses what ``portd serve`` would, and their digest is part
of the listener's config, so a reload that finds one renewed in place rebuilds the
context (new connections use it; live ones keep theirs).
"""

from __future__ import annotations

import hashlib
from typing import Any

from portd.errors import OptionError
from portd.options import Option, Settings

UPSTREAM_TLS_OPTIONS = (
    Option("upstream_tls", bool, False, "originate TLS to the upstream"),
    Option("upstream_ca", str, "", "PEM CA that signed the upstream's certificate "
           "(default: the system's trust store)"),
    Option("upstream_servername", str, "", "the name the upstream's certificate must "
           "carry, sent as SNI (default: the upstream's host; localhost for unix:)"),
    Option("upstream_verify", bool, True, "false: accept any upstream certificate"),
    Option("upstream_cert", str, "", "PEM client certificate shown to the upstream"),
    Option("upstream_key", str, "", "PEM key of upstream_cert (default: in upstream_cert)"),
)  # fmt: skip
NEEDS_TLS = ("upstream_ca", "upstream_servername", "upstream_cert", "upstream_key")
KEYS = ("upstream_ca", "upstream_cert", "upstream_key")


def upstream_tls_problems(settings: Settings) -> list[str]:
    """What :func:`upstream_context` would refuse, one line each (files are read)."""
    try:
        upstream_context(settings)
    except OptionError as exc:
        return [str(exc)]
    return []


def upstream_files_digest(settings: Settings) -> str:
    """sha256 over the bytes of the ``upstream_ca``, ``upstream_cert`` and
    ``upstream_key`` files that are set ("" without ``upstream_tls``).

    Raises:
        OptionError: a file that cannot be read (names key and path).
    """
    if not settings["upstream_tls"]:
        return ""
    from portd.tls.context import config_label, read_pem

    digest = hashlib.sha256()
    for key in KEYS:
        path = settings[key]
        digest.update(read_pem(config_label(key, path), path) if path else b"")
        digest.update(b"\0")
    return digest.hexdigest()


def upstream_context(settings: Settings) -> Any:
    """The SSLContext of the upstream connections, None when ``upstream_tls`` is off.

    Raises:
        OptionError: an ``upstream_*`` key without ``upstream_tls``, a key without a
            certificate, or a file that cannot be read or loaded (names key and path).
    """
    if not settings["upstream_tls"]:
        given = [key for key in NEEDS_TLS if settings[key]]
        given += [] if settings["upstream_verify"] else ["upstream_verify"]
        if given:
            raise OptionError(f"{', '.join(given)}: needs upstream_tls = true")
        return None
    if settings["upstream_key"] and not settings["upstream_cert"]:
        raise OptionError("upstream_key: needs upstream_cert")
    from portd.errors import TLSConfigError
    from portd.tls.context import client_context

    try:
        return client_context(
            ca_file=settings["upstream_ca"] or None, cert=settings["upstream_cert"] or None,
            key=settings["upstream_key"] or None, verify=settings["upstream_verify"], keys=KEYS,
        )  # fmt: skip
    except TLSConfigError as exc:
        raise OptionError(str(exc)) from None
