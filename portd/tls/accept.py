"""The TLS handshake of an accepted connection, on the listener's adoption path.

The listener admitted the peer (its gate counts it from accept() on, so connections
in a handshake count against ``max_connections``); here the socket becomes a TLS
transport through ``loop.connect_accepted_socket(ssl=..., ssl_handshake_timeout=...)``,
the same seam as plaintext. The handler's session exists only once the handshake is
done, so a handler never sees a failed one.

A failed handshake ends in one reason, short and stable (the listener counts and
logs them, rate-limited): OpenSSL's reason lowercased (``no_shared_cipher``,
``unsupported_protocol``, ``tlsv1_alert_unknown_ca``: the client refused our
certificate) or one of ours: ``plaintext_http`` (an HTTP request to a TLS port),
``not_tls``, ``timeout``, ``reset``, ``eof`` (the client closed before finishing:
port checks do that; counted, not logged).

Plaintext HTTP gets a closed connection (OpenSSL writes nothing back to it); with
``tls_plaintext_response = "400"`` portd first reads the request's opening bytes (a
peek, before OpenSSL sees them) and answers nginx's 400 page.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable

from portd.tls.settings import TLSConfig

TLS_HANDSHAKE_RECORD = 0x16
QUIET_REASONS = frozenset({"eof"})  # counted, not logged: a connect-and-close port check
OPENSSL_REASONS = {
    "HTTP_REQUEST": "plaintext_http",
    "WRONG_VERSION_NUMBER": "not_tls",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "client_certificate_missing",
    "CERTIFICATE_VERIFY_FAILED": "client_certificate_untrusted",
}
PLAINTEXT_400 = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: 165\r\n"
    b"Connection: close\r\n\r\n"
    b"<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>"
    b"\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n</body>\r\n</html>\r\n"
)
DRAIN_BYTES = 64 << 10
LINGER_S = 1.0


async def adopt_tls(
    loop: asyncio.AbstractEventLoop,
    conn: socket.socket,
    factory: Callable[[], asyncio.Protocol],
    tls: TLSConfig,
) -> str | None:
    """Make ``conn`` a TLS connection served by ``factory()``'s protocol.

    Ownership of ``conn`` passes to the transport on success; on failure (and on
    cancellation) it is closed here.

    Returns:
        None once the handshake completed (the protocol's connection_made has run),
        else the reason it failed.
    """
    try:
        deadline = loop.time() + tls.handshake_timeout_s
        if tls.plaintext_response == "400":
            reason = await _answer_plaintext(loop, conn, tls.handshake_timeout_s)
            if reason is not None:
                return reason
        await loop.connect_accepted_socket(
            factory, conn, ssl=tls.context,
            ssl_handshake_timeout=max(0.001, deadline - loop.time()),
        )  # fmt: skip
    except (OSError, EOFError) as exc:
        conn.close()
        return failure_reason(exc)
    except BaseException:
        conn.close()
        raise
    return None


def failure_reason(exc: BaseException) -> str:
    """The short reason a handshake failed with ``exc``."""
    if isinstance(exc, EOFError | ssl.SSLEOFError):
        return "eof"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or type(exc).__name__
        return OPENSSL_REASONS.get(reason, reason.lower())
    if isinstance(exc, TimeoutError) or (
        isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc)
    ):
        return "timeout"
    if isinstance(exc, ConnectionResetError):
        return "reset" if exc.errno else "eof"  # asyncio's bare one: EOF before the end
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower().replace(" ", "_")
    return type(exc).__name__


async def _answer_plaintext(
    loop: asyncio.AbstractEventLoop, conn: socket.socket, timeout_s: float
) -> str | None:
    """Peek at the first bytes: a TLS record goes on to the handshake (None); plaintext
    HTTP is answered 400 and closed; anything else is closed."""
    first = await _peek(loop, conn, timeout_s)
    if first is None:
        raise TimeoutError
    if not first:
        raise EOFError
    if first[0] == TLS_HANDSHAKE_RECORD:
        return None
    if not first[:1].isalpha():
        conn.close()
        return "not_tls"
    await _send_and_linger(loop, conn, PLAINTEXT_400)
    return "plaintext_http"


async def _peek(
    loop: asyncio.AbstractEventLoop, conn: socket.socket, timeout_s: float
) -> bytes | None:
    """The first bytes the peer sent, without consuming them; None after ``timeout_s``."""
    with contextlib.suppress(BlockingIOError):
        return conn.recv(8, socket.MSG_PEEK)
    if not await _readable(loop, conn, timeout_s):
        return None
    with contextlib.suppress(BlockingIOError):
        return conn.recv(8, socket.MSG_PEEK)
    return None


async def _readable(loop: asyncio.AbstractEventLoop, conn: socket.socket, timeout_s: float) -> bool:
    ready: asyncio.Future[bool] = loop.create_future()

    def done(value: bool) -> None:
        if not ready.done():
            ready.set_result(value)

    fd = conn.fileno()
    loop.add_reader(fd, done, True)
    timer = loop.call_later(timeout_s, done, False)
    try:
        return await ready
    finally:
        timer.cancel()
        loop.remove_reader(fd)


async def _send_and_linger(
    loop: asyncio.AbstractEventLoop, conn: socket.socket, reply: bytes
) -> None:
    """Read what the client sent (so the close is no RST), answer, half-close, and drop
    what still comes for LINGER_S (at most DRAIN_BYTES), as http-hello's errors do."""
    drained = 0
    with contextlib.suppress(OSError):
        drained += len(conn.recv(DRAIN_BYTES))
        conn.send(reply)  # a small reply into an empty buffer
        conn.shutdown(socket.SHUT_WR)
        end = loop.time() + LINGER_S
        while drained < DRAIN_BYTES and await _readable(loop, conn, max(0.0, end - loop.time())):
            data = conn.recv(DRAIN_BYTES)
            if not data:
                break
            drained += len(data)
    conn.close()


def logged(reason: str) -> bool:
    """False for reasons counted without a log line."""
    return reason not in QUIET_REASONS
