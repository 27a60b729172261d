"""``--tls`` for ``portd listen`` and ``portd connect``: contexts, the handshake, and a
bridge that lets the plaintext relay run unchanged over TLS.

The relay (portd.shell.relay) moves bytes with blocking calls in two threads; an
OpenSSL connection must not be used from two threads at once. So one bridge thread
owns the TLS state (an SSLObject over memory BIOs) and pumps between the network
socket and one end of a socketpair; the relay works on the other end as on any
connection. The bridge keeps the relay's rules: the relay's half-close becomes a TLS
close_notify (and reading goes on, as TLS 1.3 allows), the peer's close_notify or EOF
becomes an EOF for the relay. It buffers at most BRIDGE_LIMIT bytes each way, so flow
control still holds end to end.

Imported only when --tls is given: ``ssl`` and ``cryptography`` cost start-up time.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from portd.errors import TLSHandshakeError
from portd.shell.threads import start_thread
from portd.tls.info import sha256_fingerprint, subject_text

BRIDGE_LIMIT = 256 * 1024
HANDSHAKE_TIMEOUT_S = 10.0
READ_SIZE = 64 * 1024
JOIN_S = 5.0


def listen_context(cert: str | None, key: str | None, hosts: Sequence[str]) -> ssl.SSLContext:
    """The server context of ``portd listen --tls``: ``--cert``/``--key``, or an
    ephemeral self-signed certificate (see :func:`write_ephemeral`).

    Raises:
        TLSConfigError: --cert/--key cannot be loaded (78).
    """
    from portd.errors import OptionError, TLSConfigError
    from portd.tls.context import load_pair

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        if cert:
            load_pair(context, cert, key or cert)
            return context
        with tempfile.TemporaryDirectory(prefix="portd-listen-tls-") as directory:
            load_pair(context, *write_ephemeral(hosts, directory))
    except OptionError as exc:
        raise TLSConfigError(str(exc)) from None
    return context


def write_ephemeral(hosts: Sequence[str], directory: str) -> tuple[str, str]:
    """An ephemeral self-signed certificate for ``hosts`` and localhost (ECDSA P-256,
    valid one day) written into ``directory`` (mode 0600); its SHA-256 fingerprint goes
    to stderr, as ``ncat --ssl`` does, so a peer can pin it. Returns (cert, key) paths.
    """
    from portd.tls.certs import pem_fingerprint, self_signed

    names = certificate_names(hosts)
    issued = self_signed(names)
    paths = f"{directory}/cert.pem", f"{directory}/key.pem"
    for path, data in zip(paths, issued, strict=True):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
    fingerprint = pem_fingerprint(issued.cert_pem)
    print(f"tls: ephemeral self-signed certificate for {', '.join(names)}, valid 1 day, "
          f"SHA-256 fingerprint {fingerprint}", file=sys.stderr, flush=True)  # fmt: skip
    return paths


def certificate_names(hosts: Sequence[str]) -> list[str]:
    """The bound addresses clients can name (a wildcard means loopback), and localhost."""
    names = ["localhost"]
    for host in hosts:
        for name in ("127.0.0.1", "::1") if host in ("0.0.0.0", "::", "*", "") else (host,):
            if name not in names:
                names.append(name)
    return names


def connect_context(args: Any) -> ssl.SSLContext:
    """The client context of ``portd connect --tls``: the system's trust store, or
    ``--ca``; ``--insecure`` checks nothing (said once on stderr); ``--cert``/``--key``.

    Raises:
        TLSConfigError: a file that cannot be loaded (78).
    """
    from portd.tls.context import client_context

    if args.insecure:
        print("portd: warning: --insecure: the server's certificate and name are not checked",
              file=sys.stderr, flush=True)  # fmt: skip
    return client_context(ca_file=args.ca, cert=args.cert, key=args.key, verify=not args.insecure)


def accept_tls(
    accept: Callable[[], tuple[socket.socket, Any]], context: ssl.SSLContext
) -> tuple[socket.socket, Any, Bridge]:
    """The next client whose handshake succeeds (``portd listen --tls``): a failed one
    is one line on stderr, and listening goes on, as ``ncat --ssl -l`` does."""
    while True:
        conn, peer = accept()
        try:
            bridge = handshake(conn, context, server_side=True)
        except TLSHandshakeError as exc:
            conn.close()
            print(f"portd: TLS handshake with {peer} failed: {exc}", file=sys.stderr, flush=True)
            continue
        return bridge.start(), peer, bridge


def connect_tls(
    sock: socket.socket, context: ssl.SSLContext, name: str, target: str
) -> tuple[socket.socket, Bridge]:
    """``portd connect --tls``: the handshake on a connected socket, ``name``
    (``--servername`` or HOST) sent and checked; returns the relay's plaintext socket
    and the bridge.

    Raises:
        TLSHandshakeError: one line, OpenSSL's reason (exit 1); the socket is closed.
    """
    try:
        bridge = handshake(sock, context, server_side=False, server_hostname=name.strip("[]"))
    except TLSHandshakeError as exc:
        sock.close()
        raise TLSHandshakeError(f"TLS handshake with {target} failed: {exc}") from None
    except BaseException:
        sock.close()
        raise
    return bridge.start(), bridge


def finish(bridge: Bridge, status: int, peer: str) -> int:
    """Close the TLS side after the relay ended; a network failure the relay could not
    see (a reset under TLS reads as an EOF there) makes the status 1."""
    bridge.finish()
    if bridge.error and status == 0:
        print(f"portd: {peer}: connection lost: {bridge.error}", file=sys.stderr)
        return 1
    return status


class Bridge:
    """One TLS connection after its handshake: a thread pumping between the network
    socket and the plaintext end the relay uses (:meth:`start` returns it)."""

    def __init__(
        self, raw: socket.socket, tls: ssl.SSLObject, bios: tuple[ssl.MemoryBIO, ssl.MemoryBIO]
    ) -> None:
        self.raw = raw
        self.tls = tls
        self.incoming, self.outgoing = bios
        self.plain, self._inner = socket.socketpair()
        self.error: str | None = None  # how the network side failed, for the exit status
        self._to_raw = bytearray()
        self._to_inner = bytearray()
        self._peer_open = True  # the network still delivers
        self._relay_open = True  # the relay still sends
        self._notified = False
        self._raw_gone = False
        self.description = self._describe_session()
        self._thread: threading.Thread | None = None

    def describe(self) -> str:
        """What was negotiated (read once, before the bridge thread owns the session)."""
        return self.description

    def _describe_session(self) -> str:
        """``TLSv1.3 TLS_AES_256_GCM_SHA384, ALPN none, peer CN=..., SHA-256 AB:...``."""
        cipher = self.tls.cipher()
        parts = [f"{self.tls.version()} {cipher[0] if cipher else '?'}",
                 f"ALPN {self.tls.selected_alpn_protocol() or 'none'}"]  # fmt: skip
        der = self.tls.getpeercert(binary_form=True)
        if der:
            cert = self.tls.getpeercert() or {}
            subject = subject_text(cert) if cert else _subject_of(der)
            parts.append(f"peer {subject or '(no subject)'}, SHA-256 {sha256_fingerprint(der)}")
        else:
            parts.append("no peer certificate")
        return ", ".join(parts)

    def start(self) -> socket.socket:
        """Start pumping; returns the plaintext socket (blocking) the relay uses."""
        self.raw.setblocking(False)
        self._inner.setblocking(False)
        self._thread = start_thread(self._run)
        return self.plain

    def finish(self) -> None:
        """The relay ended: stop reading the peer, send close_notify and what is queued,
        close (waiting JOIN_S at most)."""
        with contextlib.suppress(OSError):
            self.raw.shutdown(socket.SHUT_RD)  # wakes the bridge: the peer's side is done
        if self._thread is not None:
            self._thread.join(JOIN_S)

    def _run(self) -> None:
        try:
            self._pump()
        except OSError as exc:
            self.error = _describe(exc)
        finally:
            with contextlib.suppress(OSError):
                self._send_close_notify()
                self.raw.settimeout(1.0)
                if not self._raw_gone:
                    self.raw.sendall(self._to_raw)
            self.raw.close()
            self._inner.close()

    def _pump(self) -> None:
        inner_shut = False
        self._read_records()
        while True:
            if not (self._peer_open or self._to_inner or inner_shut):
                self._inner.shutdown(socket.SHUT_WR)  # the relay reads the peer's end
                inner_shut = True
            readers = [sock for sock, ok in (
                (self.raw, self._peer_open and len(self._to_inner) < BRIDGE_LIMIT),
                (self._inner, self._relay_open and len(self._to_raw) < BRIDGE_LIMIT),
            ) if ok]  # fmt: skip
            writers = [sock for sock, data in (
                (self.raw, self._to_raw and not self._raw_gone), (self._inner, self._to_inner),
            ) if data]  # fmt: skip
            if not readers and not writers:
                return  # both sides ended and everything is sent
            readable, writable, _ = select.select(readers, writers, [])
            if self.raw in writable:
                try:
                    del self._to_raw[: self.raw.send(self._to_raw)]
                except (BrokenPipeError, ConnectionResetError):
                    if self._peer_open:
                        raise
                    # The peer ended and left: what is queued is TLS housekeeping (a
                    # close_notify), ignored as nc ignores shutdown() on a dead socket;
                    # more data from the relay is an error (_from_relay).
                    self._to_raw.clear()
                    self._raw_gone = True
            if self._inner in writable:
                try:
                    del self._to_inner[: self._inner.send(self._to_inner)]
                except OSError:  # the relay closed: the session is over
                    return
            if self.raw in readable:
                self._from_network()
            if self._inner in readable:
                self._from_relay()

    def _from_network(self) -> None:
        """Ciphertext in, plaintext queued for the relay."""
        data = self.raw.recv(READ_SIZE)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()
            self._peer_open = False
        self._read_records()

    def _read_records(self) -> None:
        """Decrypt every record the incoming BIO holds (also, at the start, what came in
        with the handshake's last flight: it waits there, not on the socket)."""
        try:
            while chunk := self.tls.read(READ_SIZE):
                self._to_inner += chunk
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # close_notify, or EOF: the end
            self._peer_open = False
        self._to_raw += self.outgoing.read()

    def _from_relay(self) -> None:
        """Plaintext from the relay, ciphertext queued; the relay's end (a half-close,
        or its close) sends close_notify, and reading the peer goes on."""
        try:
            data = self._inner.recv(READ_SIZE)
        except OSError:
            data = b""
        if not data:
            self._relay_open = False
            self._send_close_notify()
            return
        if self._raw_gone:
            raise BrokenPipeError(32, "the peer stopped reading before stdin ended")
        self.tls.write(data)
        self._to_raw += self.outgoing.read()

    def _send_close_notify(self) -> None:
        if self._notified:
            return
        self._notified = True
        with contextlib.suppress(ssl.SSLError):
            self.tls.unwrap()  # sends close_notify; wants the peer's, which may come later
        self._to_raw += self.outgoing.read()


def handshake(
    raw: socket.socket,
    context: ssl.SSLContext,
    *,
    server_side: bool,
    server_hostname: str | None = None,
    timeout_s: float = HANDSHAKE_TIMEOUT_S,
) -> Bridge:
    """The TLS handshake on a connected socket, within ``timeout_s``.

    Raises:
        TLSHandshakeError: it failed (the message is OpenSSL's reason, or the
            certificate check's: "certificate has expired", "Hostname mismatch, ...").
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=server_side,
                           server_hostname=server_hostname)  # fmt: skip
    deadline = time.monotonic() + timeout_s
    raw.settimeout(timeout_s)
    try:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                raw.settimeout(max(0.001, deadline - time.monotonic()))
                data = raw.recv(READ_SIZE)
                if not data:
                    raise TLSHandshakeError("the peer closed the connection") from None
                incoming.write(data)
        raw.sendall(outgoing.read())
    except ssl.SSLCertVerificationError as exc:
        with contextlib.suppress(OSError):
            raw.sendall(outgoing.read())  # the alert: the server learns why
        raise TLSHandshakeError(exc.verify_message or exc.reason or str(exc)) from None
    except ssl.SSLError as exc:
        with contextlib.suppress(OSError):
            raw.sendall(outgoing.read())
        raise TLSHandshakeError(_ssl_reason(exc)) from None
    except TimeoutError:
        raise TLSHandshakeError(f"no handshake within {timeout_s:g} s") from None
    except OSError as exc:
        raise TLSHandshakeError(_describe(exc)) from None
    raw.settimeout(None)
    return Bridge(raw, tls, (incoming, outgoing))


def _ssl_reason(exc: ssl.SSLError) -> str:
    reason = (exc.reason or "").replace("_", " ").lower()
    return reason or str(exc)


def _describe(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return _ssl_reason(exc)
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


def _subject_of(der: bytes) -> str:
    """A certificate's subject when the context did not verify it (``--insecure``)."""
    from cryptography import x509

    return str(x509.load_der_x509_certificate(der).subject.rfc4514_string())
