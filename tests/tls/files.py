"""Certificate files for the TLS tests, written where a test asks."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import NamedTuple

from portd.tls.certs import Authority, Issued

NAMES = ("localhost", "127.0.0.1", "::1")


class Pair(NamedTuple):
    cert: Path
    key: Path


def write_pair(directory: Path, issued: Issued, stem: str = "server") -> Pair:
    cert, key = directory / f"{stem}-cert.pem", directory / f"{stem}-key.pem"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    return Pair(cert, key)


def expired(authority: Authority) -> Issued:
    now = datetime.datetime.now(datetime.UTC)
    return authority.issue(
        NAMES,
        not_before=now - datetime.timedelta(days=3),
        not_after=now - datetime.timedelta(days=1),
    )


def tls_table(pair: Pair, extra: str = "", handler: str = "echo", name: str = "web") -> str:
    return (
        f'[[listener]]\nname = "{name}"\nbind = "127.0.0.1:0"\nhandler = "{handler}"\n'
        f'tls_cert = "{pair.cert}"\ntls_key = "{pair.key}"\n{extra}'
    )
