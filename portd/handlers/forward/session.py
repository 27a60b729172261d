"""One forwarded stream connection: the client side (a session) and the upstream side
(an asyncio Protocol), relaying in loop callbacks.

Without toxics a chunk is one ``write`` from the protocol that read it to the other
side's transport. Flow control holds both ways: a side whose write buffer passes its
high-water mark pauses reading on the other side until it drains. A half-close crosses
over (the client's FIN reaches the upstream, whose answer still comes back) and the
connection closes once both directions have ended; an RST on one side is sent on as an
RST; an upstream that cannot be reached closes the client with an RST and one
``upstream_failed`` line. Toxics put a :class:`~portd.toxics.pipe.Pipe` in a direction
while they apply to this connection; a change of toxics rebuilds the pipes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import ssl
import struct
from typing import TYPE_CHECKING, Any

from portd.handlers.base import Connection, StreamSession
from portd.toxics.pipe import Pipe
from portd.toxics.stages import CLOSE, EOF, Item
from portd.toxics.table import Targeting

if TYPE_CHECKING:
    from portd.handlers.forward import ForwardHandler

RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, zero timeout: close sends RST
PAUSE_UPSTREAM_FULL = 1  # why the client is not read: the upstream's buffer is full
PAUSE_PIPE = 2  # the upstream pipe's stages hold too much
PAUSE_CONNECTING = 4  # no upstream yet
PAUSE_CLIENT_FULL = 1  # why the upstream is not read: the client's buffer is full


def describe(exc: BaseException) -> str:
    """An OSError's reason as a user reads it: ``Connection refused``, ``timed out``."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):  # its errno is OpenSSL's, not the OS's
        return f"TLS: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.errno:  # asyncio's text wraps the address around it
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def send_reset(transport: Any) -> None:
    """Abort ``transport`` with an RST (SO_LINGER 0), not a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
    transport.abort()


class Upstream(asyncio.Protocol):
    """The upstream side: every callback goes straight to the session."""

    __slots__ = ("session",)

    def __init__(self, session: ForwardSession) -> None:
        self.session = session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.session.upstream_made(transport)

    def data_received(self, data: bytes) -> None:
        session = self.session
        session.bytes_down += len(data)
        if session.down_pipe is None:
            session.conn.write(data)
        else:
            session.down_pipe.push(data)

    def eof_received(self) -> bool:
        self.session.upstream_eof()
        # The session closes once both directions ended; TLS closes on its own (asyncio
        # warns when asked to keep it open).
        return self.session.handler.ssl is None

    def pause_writing(self) -> None:
        self.session.pause_client(PAUSE_UPSTREAM_FULL, True)

    def resume_writing(self) -> None:
        self.session.pause_client(PAUSE_UPSTREAM_FULL, False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.upstream_lost(exc)


class ForwardSession(StreamSession):
    """The client side of one forwarded connection."""

    def __init__(self, handler: ForwardHandler, conn: Connection, ordinal: int) -> None:
        self.handler = handler
        self.conn = conn
        self.transport: Any = None  # the upstream's, once connected
        self.pending: list[bytes] = []  # from the client before the upstream answered
        self.paused = 0  # why the client is not read (PAUSE_* bits)
        self.upstream_paused = 0  # why the upstream is not read
        self.client_done = self.upstream_done = False  # each direction's EOF delivered
        self.client_eof = False  # the client's FIN (or TLS close_notify) arrived
        self.upstream_half_closed = False  # the upstream's FIN (or close_notify) arrived
        self._client_tls: bool | None = None
        self.bytes_up = self.bytes_down = 0
        self.ended = ""  # how the upstream side ended
        self.ordinal = ordinal
        self._rng: random.Random | None = None
        self._targeting: Targeting | None = None
        self.clock = conn.clock
        self.up_pipe: Pipe | None = None
        self.down_pipe: Pipe | None = None
        self.lost = False
        self.pause_client(PAUSE_CONNECTING, True)
        if handler.table:  # no toxic: no pipe to build
            self.toxics_changed()
        self.task: Any = None
        self.task = conn.start_task(self._connect())

    @property
    def rng(self) -> random.Random:
        """This connection's random source (toxicity draws, jitter, slice sizes), made on
        first use: seeding costs more than a whole untoxic connection's relaying."""
        return self._random()

    @property
    def targeting(self) -> Targeting:
        """Which toxics this connection gets (made once a toxic exists)."""
        if self._targeting is None:
            peer = self.conn.peer
            self._targeting = Targeting(self.handler.table, self.ordinal, peer.source, self._random)
        return self._targeting

    def _random(self) -> random.Random:
        if self._rng is None:
            self._rng = self.handler.next_random(self.ordinal)
        return self._rng

    # Toxics.

    def toxics_changed(self) -> None:
        """Apply the table as it is now to both directions."""
        if self.lost:
            return
        self.up_pipe = self._pipe(self.up_pipe, "upstream")
        self.down_pipe = self._pipe(self.down_pipe, "downstream")

    def _pipe(self, pipe: Pipe | None, stream: str) -> Pipe | None:
        chosen = self.targeting.chosen(stream)
        if not chosen and (pipe is None or not pipe.held_bytes):
            if pipe is not None:
                pipe.set_toxics(())
            return None
        if pipe is None:
            if stream == "upstream":
                pipe = Pipe(self, self._to_upstream, self._pause_from_up_pipe)
            else:
                pipe = Pipe(self, self._to_client, self._pause_from_down_pipe)
        pipe.set_toxics(chosen)
        return pipe

    def released(self) -> None:
        """A stage let bytes go (the Ends protocol)."""
        for pipe in (self.up_pipe, self.down_pipe):
            if pipe is not None:
                pipe.released()

    def reset_connection(self, reason: str) -> None:
        """RST both sides now (reset_peer, cut_after)."""
        if self.transport is not None:
            send_reset(self.transport)
        self.conn.reset(reason)

    # Client -> upstream.

    def data_received(self, data: bytes) -> None:
        if self.up_pipe is not None:
            self.up_pipe.push(data)
        elif self.transport is not None:
            self.bytes_up += len(data)
            self.transport.write(data)
        else:
            self.pending.append(data)  # uvloop reads one chunk past pause_reading

    def eof_received(self) -> bool:
        self.client_eof = True
        if self.up_pipe is not None:
            self.up_pipe.push(EOF)
        elif self.transport is not None:
            self._to_upstream(EOF)
        else:
            self.pending.append(b"")
        return not self.client_tls  # TLS closes on its own after close_notify

    @property
    def client_tls(self) -> bool:
        """Whether the client speaks TLS (asyncio's TLS has no half-close)."""
        if self._client_tls is None:
            self._client_tls = self.conn.tls is not None
        return self._client_tls

    def _to_upstream(self, item: Item) -> None:
        transport = self.transport
        if transport is None:  # toxics released it before the upstream answered
            if item == CLOSE:
                self.close_both()
            else:
                self.pending.append(item if isinstance(item, bytes) else b"")
            return
        if transport.is_closing():
            return
        if isinstance(item, bytes):
            self.bytes_up += len(item)
            transport.write(item)
        elif item == EOF:
            if transport.can_write_eof():
                transport.write_eof()
            else:  # TLS: close_notify after what is queued; it ends both directions
                self.ended = self.ended or "closed"
                transport.close()
            self.client_done = True
            self._maybe_close()
        elif item == CLOSE:
            self.close_both()

    def _pause_from_up_pipe(self, pause: bool) -> None:
        self.pause_client(PAUSE_PIPE, pause)

    def pause_client(self, reason: int, pause: bool) -> None:
        """Stop (or resume) reading the client for ``reason``; it reads when none is left."""
        before = self.paused
        self.paused = before | reason if pause else before & ~reason
        if before and not self.paused:
            self.conn.resume_reading()
        elif self.paused and not before:
            self.conn.pause_reading()

    # Upstream -> client.

    def _to_client(self, item: Item) -> None:
        conn = self.conn
        if isinstance(item, bytes):
            conn.write(item)
        elif item == EOF:
            self.upstream_done = True
            if self.client_tls:  # no half-close over TLS: close_notify ends both ways
                self.close_both()
                return
            conn.write_eof()
            self._maybe_close()
        elif item == CLOSE:
            self.close_both()

    def pause_writing(self) -> None:  # the client does not read: stop reading upstream
        self.pause_upstream(PAUSE_CLIENT_FULL, True)

    def resume_writing(self) -> None:
        self.pause_upstream(PAUSE_CLIENT_FULL, False)

    def _pause_from_down_pipe(self, pause: bool) -> None:
        self.pause_upstream(PAUSE_PIPE, pause)

    def pause_upstream(self, reason: int, pause: bool) -> None:
        """Stop (or resume) reading the upstream for ``reason``; it reads when none is
        left (a pipe that drained must not resume a side whose client does not read)."""
        before = self.upstream_paused
        self.upstream_paused = before | reason if pause else before & ~reason
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if before and not self.upstream_paused:
            transport.resume_reading()
        elif self.upstream_paused and not before:
            transport.pause_reading()

    # The upstream's life.

    async def _connect(self) -> None:
        handler = self.handler
        if handler.table:
            slow_opens = [t for t in handler.table.toxics if t.type == "slow_open"]
            delay_ms = sum(t["delay"] for t in slow_opens if self.targeting.applies(t))
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
        timeout_s = handler.settings["connect_timeout_s"]
        # A timer, not asyncio.timeout(): a third of the cost, on every connection.
        timer = self.clock.call_later(timeout_s, self._timed_out) if timeout_s else None
        try:
            await self.conn.connect(handler.upstream, lambda: Upstream(self), ssl=handler.ssl,
                                    server_hostname=handler.server_hostname)  # fmt: skip
        except OSError as exc:
            self._failed(describe(exc))
        finally:
            if timer is not None:
                timer.cancel()

    def _timed_out(self) -> None:
        if self.task is not None:
            self.task.cancel()  # the loop closes the half-made socket
        self._failed("timed out")

    def _failed(self, reason: str) -> None:
        self.ended = f"upstream_failed: {reason}"
        self.conn.log.warning("upstream_failed", upstream=self.handler.upstream_name, error=reason)
        self.conn.reset(self.ended)

    def upstream_made(self, transport: Any) -> None:
        """Connected: send the PROXY header and what the client sent meanwhile."""
        if self.lost:  # the client was reset, or cut by portd, while this connected
            send_reset(transport)
            return
        self.transport = transport
        header = self.handler.proxy_header(self.conn)
        if header:
            transport.write(header)
        pending, self.pending = self.pending, []
        for data in pending:
            self._to_upstream(data if data else EOF)
        if self.upstream_paused:  # the client stopped reading before the upstream answered
            transport.pause_reading()
        self.pause_client(PAUSE_CONNECTING, False)

    def upstream_eof(self) -> None:
        """The upstream half-closed: pass it on after what it sent."""
        self.upstream_half_closed = True
        if self.down_pipe is not None:
            self.down_pipe.push(EOF)
        else:
            self._to_client(EOF)

    def upstream_lost(self, exc: Exception | None) -> None:
        """The upstream connection is gone: a reset is passed on as a reset."""
        if self.lost:
            self.handler.lingering.discard(self)
            return
        if isinstance(exc, ConnectionResetError):
            self.ended = "reset"
            self.conn.reset("upstream reset")
        elif exc is not None:
            self.ended = describe(exc)
            self.conn.reset(f"upstream: {self.ended}")
        else:
            self.ended = self.ended or "closed"
            pipe = self.down_pipe
            if pipe is not None and pipe.stages:
                # A toxic may hold the upstream's last bytes (a TLS upstream closes right
                # after its close_notify): the end follows them, in order.
                if not self.upstream_half_closed:
                    pipe.push(EOF)
                pipe.push(CLOSE)
                return
            if not self.upstream_done:  # closed without a FIN first: end the client too
                self._to_client(EOF)
            self.conn.close()

    def _maybe_close(self) -> None:
        if self.client_done and self.upstream_done:
            self.close_both()

    def close_both(self) -> None:
        """Close both sides after what is queued (FIN both ways)."""
        if self.transport is not None:
            self.ended = self.ended or "closed"
            if not self.transport.is_closing():  # a second close() breaks a TLS transport
                self.transport.close()
        self.conn.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.handler.table.unsubscribe(self)
        for pipe in (self.up_pipe, self.down_pipe):
            if pipe is not None:
                pipe.close()
        transport = self.transport
        if transport is None:
            return
        if transport.is_closing():  # closing after its last bytes: abort it at the stop
            self.handler.lingering.add(self)
            return
        if exc is None and self.client_eof and self.client_tls:
            # The TLS client's close_notify ended both directions (asyncio's TLS has no
            # half-close): a clean end, passed on as one.
            self.ended = self.ended or "closed"
            transport.close()
            self.handler.lingering.add(self)
            return
        # A client's FIN comes as eof_received first, so a connection lost while the
        # upstream is still open was reset by the client, or cut by portd (a timeout,
        # the end of a drain, a test server stopping): the upstream gets an RST too.
        self.ended = self.ended or "aborted"
        send_reset(transport)

    def log_fields(self) -> dict[str, Any]:
        return {"upstream": self.handler.upstream_name, "upstream_ended": self.ended or None}
