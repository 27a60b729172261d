"""TLS for test servers: a per-session test CA, the certificates it issues, and the TLS
fault servers.

The CA is made on first use, once per process (so once per pytest-xdist worker), in a
private temporary directory removed at exit; its PEM is ``Server.ca_path`` (curl
``--cacert``, ``SSL_CERT_FILE``) and ``Server.ssl_context()`` trusts it. Leaves are
ECDSA P-256 for ``localhost``, ``127.0.0.1`` and ``::1``.

``serve(..., tls=MODE)``: ``True`` serves a valid leaf; a fault name serves what a
client must refuse, or breaks the handshake itself:

* ``expired``, ``not-yet-valid``: a leaf of the test CA, valid yesterday / from tomorrow;
* ``wrong-host``: a leaf for ``wrong-host.invalid`` only;
* ``self-signed``: a leaf nobody issued;
* ``untrusted-ca``: a leaf of another CA, which nothing trusts;
* ``handshake-stall``: accepts and reads the ClientHello, never answers;
* ``reset-during-handshake``: reads the ClientHello, then resets the connection;
* ``tls1.0-only``: speaks TLS 1.0 and nothing newer. OpenSSL 3 refuses TLS 1.0 at its
  default security level (and Debian's config asks for 1.2 at least), so this server
  lowers its own context to security level 0; modern clients then refuse it
  ("unsupported protocol", curl exit 35), which is the point. A client that wants to
  connect must lower its own level too (``DEFAULT:@SECLEVEL=0``, minimum TLSv1).
"""

from __future__ import annotations

import atexit
import datetime
import os
import shutil
import ssl
import tempfile
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from portd.tls.certs import Authority, Issued, self_signed

HOST_NAMES = ("localhost", "127.0.0.1", "::1")
CERTIFICATE_FAULTS = ("expired", "not-yet-valid", "wrong-host", "self-signed", "untrusted-ca")
HANDSHAKE_FAULTS = {  # served by a plaintext fault handler: the client's handshake breaks
    "handshake-stall": ("stall", {}),
    "reset-during-handshake": ("reset", {"after_bytes": 1, "counting": "received"}),
}
TLS_FAULTS = (*CERTIFICATE_FAULTS, *HANDSHAKE_FAULTS, "tls1.0-only")
TLS_MODES = ("valid", *TLS_FAULTS)


class CertFiles(NamedTuple):
    """A certificate and its key, as files (for a client: ``ssl_context(client_cert=...)``,
    ``curl --cert CERT --key KEY``)."""

    cert_path: str
    key_path: str


class SessionAuthority:
    """The session's test CA: issues server and client certificates as files."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="portd-test-ca-"))
        atexit.register(shutil.rmtree, self.directory, True)
        self.authority = Authority("portd test CA")
        self.ca_path = str(self._write("ca.pem", self.authority.cert_pem))
        self._lock = threading.Lock()
        self._leaves: dict[str, CertFiles] = {}
        self._serial = 0

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        return path

    def _save(self, stem: str, issued: Issued) -> CertFiles:
        with self._lock:
            self._serial += 1
            stem = f"{stem}-{self._serial}"
            cert = self._write(f"{stem}-cert.pem", issued.cert_pem)
            key = self._write(f"{stem}-key.pem", issued.key_pem)
        return CertFiles(str(cert), str(key))

    def issue_client_cert(self, name: str = "portd test client") -> CertFiles:
        """A client certificate (clientAuth) for ``name``, signed by the test CA."""
        return self._save("client", self.authority.issue([name], client=True))

    def server_cert(self, mode: str = "valid") -> CertFiles:
        """The server certificate of ``mode`` (made once per session)."""
        with self._lock:
            found = self._leaves.get(mode)
        if found is None:
            found = self._save(mode, _server_issued(self.authority, mode))
            with self._lock:
                found = self._leaves.setdefault(mode, found)
        return found

    def client_context(self, client_cert: CertFiles | None = None) -> ssl.SSLContext:
        """A client context that trusts the test CA (and checks host names)."""
        context = ssl.create_default_context(cafile=self.ca_path)
        if client_cert is not None:
            context.load_cert_chain(client_cert.cert_path, client_cert.key_path)
        return context


def _server_issued(authority: Authority, mode: str) -> Issued:
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    if mode == "expired":
        return authority.issue(HOST_NAMES, not_before=now - 3 * day, not_after=now - day)
    if mode == "not-yet-valid":
        return authority.issue(HOST_NAMES, not_before=now + day, not_after=now + 3 * day)
    if mode == "wrong-host":
        return authority.issue(["wrong-host.invalid"])
    if mode == "self-signed":
        return self_signed(HOST_NAMES)
    if mode == "untrusted-ca":
        return Authority("portd untrusted CA").issue(HOST_NAMES)
    return authority.issue(HOST_NAMES)


_AUTHORITY: SessionAuthority | None = None
_AUTHORITY_LOCK = threading.Lock()


def session_authority() -> SessionAuthority:
    """The session's test CA (made on first use)."""
    global _AUTHORITY  # noqa: PLW0603 - one CA per process, made lazily
    with _AUTHORITY_LOCK:
        if _AUTHORITY is None:
            _AUTHORITY = SessionAuthority()
        return _AUTHORITY


def tls_mode(tls: bool | str) -> str | None:
    """``True`` -> ``valid``, a fault name as given, ``False`` -> None.

    Raises:
        ValueError: an unknown mode, naming the known ones.
    """
    if tls is False:
        return None
    mode = "valid" if tls is True else tls
    if mode not in TLS_MODES:
        known = ", ".join(repr(name) for name in TLS_MODES)
        raise ValueError(f"tls={tls!r}: expected True, False or one of {known}")
    return mode


def tls_options(mode: str, client_auth: bool) -> tuple[str | None, dict[str, Any]]:
    """The handler to serve instead (handshake faults) and the listener keys to add."""
    if mode in HANDSHAKE_FAULTS:
        handler, fault_options = HANDSHAKE_FAULTS[mode]
        return handler, dict(fault_options)
    authority = session_authority()
    files = authority.server_cert(mode if mode in CERTIFICATE_FAULTS else "valid")
    options: dict[str, Any] = {"tls_cert": files.cert_path, "tls_key": files.key_path}
    if client_auth:
        options["tls_client_ca"] = authority.ca_path
    return None, options


def finish_context(mode: str, tls: Any) -> None:
    """Make the listener's context what the mode asks beyond its keys (tls1.0-only)."""
    if mode != "tls1.0-only" or tls is None:
        return
    context: ssl.SSLContext = tls.context
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 allows TLS 1.0 at level 0 only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated: that is the fault
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1


def merged(options: Mapping[str, Any], added: Mapping[str, Any]) -> dict[str, Any]:
    """The fixture's options with the TLS ones; a key given by the caller wins."""
    return {**added, **options}
