"""``portd cert [--out DIR] NAME...``: a local CA and a certificate for NAMEs, as files.

Like mkcert: DIR is made when missing (not its parents); ``ca.pem`` (and
``ca-key.pem``, mode 0600) are made once per directory and reused when found there,
so every leaf made in one directory is trusted by one ``ca.pem``; ``cert.pem`` and
``key.pem`` (mode 0600) are the leaf for the names and IP addresses given. Files are
written through an exclusive temporary in DIR and renamed into place, never through a
symlink. Imports ``cryptography`` only when run.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Any

from portd.errors import CannotCreateError, TLSConfigError, UsageError

DNS_NAME = re.compile(r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                      r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # fmt: skip
WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def check_name(name: str) -> str:
    """A DNS name (``*.`` allowed first) or an IP address, as given.

    Raises:
        UsageError: anything else.
    """
    import ipaddress

    with contextlib.suppress(ValueError):
        ipaddress.ip_address(name.strip("[]"))
        return name.strip("[]")
    if len(name) <= 253 and DNS_NAME.fullmatch(name):
        return name
    raise UsageError(f"{name!r} is neither a host name nor an IP address")


def write_certificates(out: str, given: list[str]) -> int:
    """Write the CA (unless ``out`` has one) and the leaf; list the files on stdout.

    Raises:
        UsageError: a name that is neither a host name nor an IP address (64).
        CannotCreateError: a file could not be written (73).
        TLSConfigError: ``out`` holds a CA pair that cannot be loaded (78).
    """
    names = [check_name(name) for name in given]
    from portd.tls.certs import Authority

    directory = Path(out)
    try:
        directory.mkdir(mode=0o755, exist_ok=True)  # its parent must exist
    except OSError as exc:
        raise CannotCreateError(f"cannot create {directory}: {exc.strerror}") from None
    authority = _authority(directory)
    if authority is None:
        authority = Authority("portd local CA")
        write_file(directory / "ca-key.pem", authority.key_pem(), 0o600)
        write_file(directory / "ca.pem", authority.cert_pem, 0o644)
        print(f"{directory / 'ca.pem'}: a new CA (its key: ca-key.pem, keep it private)")
    issued = authority.issue(names)
    write_file(directory / "key.pem", issued.key_pem, 0o600)
    write_file(directory / "cert.pem", issued.cert_pem, 0o644)
    print(f"{directory / 'cert.pem'}, {directory / 'key.pem'}: for {', '.join(names)}")
    return 0


def _authority(directory: Path) -> Any:
    """The CA already in ``directory``, None when there is none.

    Raises:
        TLSConfigError: ca.pem or ca-key.pem is there but the pair cannot be loaded.
    """
    from portd.tls.certs import Authority

    cert, key = directory / "ca.pem", directory / "ca-key.pem"
    if not cert.exists() and not key.exists():
        return None
    try:
        return Authority.load(cert.read_bytes(), key.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TLSConfigError(
            f"{directory}: ca.pem and ca-key.pem cannot be used: {reason} (move them away "
            "to make a new CA)"
        ) from None


def write_file(path: Path, data: bytes, mode: int) -> None:
    """``data`` into ``path`` with exactly ``mode``, atomically: an exclusive temporary
    (never a planted file or symlink) renamed over ``path``.

    Raises:
        CannotCreateError: the directory is missing or not writable (one line, 73).
    """
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(temporary, WRITE_FLAGS, mode)
        try:
            os.fchmod(fd, mode)  # exactly, whatever the umask
            os.write(fd, data)
        finally:
            os.close(fd)
        temporary.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise CannotCreateError(f"cannot write {path}: {exc.strerror}") from None
