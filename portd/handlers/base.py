"""The handler contract: what a handler declares and what the server offers it.

A handler is a class. The server makes one instance per listener from validated
settings (before any socket is bound), then for stream listeners asks it for a
:class:`StreamSession` per connection and for datagram listeners passes it each
datagram. The server owns every socket: a session never closes the transport behind
the server's back, and however a session ends (returns, raises, peer vanishes) the
server closes the connection and logs one ``connection_closed`` line.

Sessions are driven by callbacks from the event loop, like :class:`asyncio.Protocol`,
because the per-byte path must stay cheap. A session that needs to wait on something
uses the connection's ``clock`` (timers) or ``start_task`` (a task the connection owns:
if it raises, the failure is ``handler_failed`` and the connection is aborted). A
handler that is naturally sequential (a proxy, a program on a port) subclasses
:class:`portd.handlers.streams.StreamHandler` and writes ``async def serve(stream)``.

A handler that runs a program per connection declares ``takes_sockets``: its
connections start without portd reading a byte, ``conn.lend_socket()`` gives it the
socket for the program's stdin and stdout, ``conn.hold()`` keeps the connection counted
until the program is reaped, ``conn.watch(fd, callback)`` watches the program's
descriptors, and ``conn.annotate(...)`` adds its exit status to ``connection_closed``.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from portd.endpoints.base import Endpoint, Peer, ProtocolName
from portd.options import Option, Settings

if TYPE_CHECKING:
    from portd.tls.info import TLSInfo


class TimerHandle(Protocol):
    """A scheduled callback."""

    def cancel(self) -> None:
        """Do not run it."""


class Clock(Protocol):
    """The event loop's clock: its time and timers (a manual one in handler tests)."""

    def time(self) -> float:
        """Seconds on the loop's monotonic clock."""

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Any:
        """Run ``callback(*args)`` ``delay`` seconds from now; returns a TimerHandle."""

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> Any:
        """Run ``callback(*args)`` at loop time ``when``; returns a TimerHandle."""

    def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> Any:
        """From another thread (a handler's worker): run ``callback(*args)`` on the loop."""


class Logger(Protocol):
    """A structlog bound logger: events are snake_case facts with keyword fields."""

    def bind(self, **fields: Any) -> Logger:
        """The same logger with more context."""

    def debug(self, event: str, **fields: Any) -> Any:
        """Log at debug level."""

    def info(self, event: str, **fields: Any) -> Any:
        """Log at info level."""

    def warning(self, event: str, **fields: Any) -> Any:
        """Log at warning level."""

    def error(self, event: str, **fields: Any) -> Any:
        """Log at error level."""


class FdWatch(Protocol):
    """A descriptor a connection watches for its handler."""

    def cancel(self) -> None:
        """Stop watching (idempotent)."""


class Connection(Protocol):
    """What the server offers a stream session."""

    conn_id: int

    @property
    def listener(self) -> str:
        """The listener's name."""

    @property
    def peer(self) -> Peer:
        """The client: an InetPeer (``host``, ``port``) or a UnixPeer (``pid``, ``uid``,
        ``gid``, ``path``); ``str(peer)`` is how logs name it."""

    @property
    def log(self) -> Logger:
        """A structlog logger bound to the listener, ``conn_id`` and ``peer``."""

    @property
    def clock(self) -> Clock:
        """The loop's clock and timers."""

    @property
    def draining(self) -> bool:
        """True once the daemon is stopping: finish the current exchange, then close."""

    def start_task(self, coro: Coroutine[Any, Any, object]) -> Any:
        """Run ``coro`` as a task the connection owns: cancelled when the connection is
        lost, and if it raises, logged once as ``handler_failed`` and the connection
        aborted. Returns the task."""

    def write(self, data: bytes) -> None:
        """Queue bytes for the peer; watch pause_writing to keep the queue bounded."""

    def get_write_buffer_size(self) -> int:
        """Bytes queued and not yet handed to the kernel."""

    def is_closing(self) -> bool:
        """True once the connection is closing or lost (a write failed, close() was called)."""

    def write_eof(self) -> None:
        """Half-close: the peer reads EOF once queued bytes are sent."""

    def close(self) -> None:
        """Close after queued bytes are sent."""

    def abort(self) -> None:
        """Close now, dropping queued bytes (the peer may see a reset)."""

    def reset(self, reason: str = "") -> None:
        """Close now with an RST the peer always sees: the exchange failed (``reason``,
        such as "file_failed: max_bytes", names why in ``connection_closed``)."""

    def pause_reading(self) -> None:
        """Stop receiving data_received calls until resume_reading."""

    def resume_reading(self) -> None:
        """Undo pause_reading."""

    @property
    def sockname(self) -> Any:
        """The local address the client connected to (``getsockname()``), for a proxy
        that tells its upstream who connected where (the PROXY protocol)."""

    def connect(
        self,
        endpoint: Endpoint,
        protocol_factory: Callable[[], Any],
        *,
        ssl: Any = None,
        server_hostname: str | None = None,
    ) -> Awaitable[tuple[Any, Any]]:
        """Open a client connection to ``endpoint`` on the connection's loop (a proxy's
        upstream): ``(transport, protocol)``; with ``ssl`` (an SSLContext) over TLS,
        verified for ``server_hostname`` (default: the endpoint's host). The caller owns
        the transport.

        Raises (when awaited):
            OSError: refused, unreachable, or the name does not resolve.
        """

    @property
    def tls(self) -> TLSInfo | None:
        """The TLS session (version, cipher, ALPN, the client certificate's subject) of
        a TLS connection, None for plaintext: the socket under a TLS connection carries
        ciphertext, so never hand it to anything that expects the peer's bytes."""

    @property
    def local_address(self) -> Any:
        """The address the peer connected to, as getsockname() gives it."""

    def lend_socket(self) -> socket.socket | None:
        """For a handler that ``takes_sockets``: a duplicate of the connection's socket,
        blocking, for a program to use as its stdin and stdout while portd reads nothing
        (the caller closes the duplicate once the program has it). None when the bytes
        must pass through portd: a TLS layer, a limit that watches the bytes, a handler
        that does not take sockets, or a connection portd already read from. The
        connection stays the server's: counted, drained, closed and logged as any other;
        the peer's reset still ends it (``connection_lost``)."""

    def reclaim_socket(self) -> bool:
        """The program that had the lent socket is gone: portd may read it again (to
        drain what the peer still sends before a clean close). True when the peer has
        half-closed and left nothing unread: closing now is a clean FIN."""

    def hold(self) -> Callable[[], None]:
        """Keep the connection counted (its ``max_connections`` slot, the drain, ``portd
        status``) until the returned release is called, even after its transport is
        gone: a program outliving its client. ``connection_closed`` is written then."""

    def annotate(self, **fields: Any) -> None:
        """Add ``fields`` (an exit status) to the connection's ``connection_closed`` line."""

    def watch(self, fd: int, callback: Callable[[], object], writable: bool = False) -> FdWatch:
        """Call ``callback()`` while ``fd`` is readable (or writable), until cancelled or
        the connection is over for good; the caller owns ``fd`` (cancel, then close)."""


class DatagramEndpoint(Protocol):
    """What the server offers a datagram handler."""

    @property
    def log(self) -> Logger:
        """A structlog logger bound to the listener."""

    def send(self, data: bytes, peer: Peer) -> bool:
        """Send one datagram to ``peer``; False when it was dropped (the socket's send
        buffer is full, or the peer cannot be reached)."""

    @property
    def clock(self) -> Clock:
        """The loop's clock and timers."""

    @property
    def max_sessions(self) -> int:
        """How many clients a handler may keep state for (the listener's
        ``max_connections``): a forward's NAT table stays within it."""

    def watch_socket(self, sock: Any, readable: Callable[[], object]) -> None:
        """Call ``readable()`` whenever ``sock`` (a handler's own non-blocking socket,
        such as a forward's upstream socket) has something to read."""

    def unwatch_socket(self, sock: Any) -> None:
        """Stop watching ``sock`` (before closing it)."""


class LendingEndpoint(DatagramEndpoint, Protocol):
    """What the server offers a handler that takes a datagram socket (inetd's ``wait``)."""

    listener: str  # the listener's name

    @property
    def clock(self) -> Clock:
        """The loop's clock and timers."""

    @property
    def local_address(self) -> Any:
        """The socket's own address."""

    def lend_socket(
        self, shutdown: Callable[[], object], abort: Callable[[], object]
    ) -> tuple[socket.socket, Callable[..., None]]:
        """A duplicate of the socket (blocking) for a program, and the release to call
        once it is gone (``release(drop=True)``: it never started, drop the datagram
        that woke it); the caller closes the duplicate once the program has it. Until
        the release portd reads nothing, and the drain counts the socket as live:
        ``shutdown()`` is called when it starts, ``abort()`` when it ends."""

    def watch(self, fd: int, callback: Callable[[], object], writable: bool = False) -> FdWatch:
        """Call ``callback()`` while ``fd`` is readable (a program's pidfd), until the
        returned watch is cancelled."""


class StreamSession:
    """Per-connection logic. Every method is optional; the defaults do nothing."""

    def data_received(self, data: bytes) -> None:
        """Bytes arrived from the peer."""

    def eof_received(self) -> bool:
        """The peer half-closed. Return True to keep writing; False closes after flush."""
        return False

    def pause_writing(self) -> None:
        """The write queue passed its high-water mark: stop producing (a peer that does
        not read must not make the daemon grow)."""

    def resume_writing(self) -> None:
        """The write queue drained below its low-water mark."""

    def shutdown_requested(self) -> None:
        """The daemon started draining: close when idle, finish what is in flight.

        The default does nothing, so the connection may run until the drain timeout.
        """

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is closed; release what the session holds."""

    def log_fields(self) -> Mapping[str, Any]:
        """Fields the session adds to the ``connection_closed`` line (a proxy's upstream)."""
        return {}


class Handler:
    """Base class for handlers.

    Subclasses set ``name``, ``protocols`` and ``options`` and implement
    :meth:`open_session` (streams: TCP, unix stream sockets) and/or
    :meth:`datagram_received` (UDP, unix datagram sockets).
    """

    name: ClassVar[str]
    protocols: ClassVar[frozenset[ProtocolName]]
    options: ClassVar[tuple[Option, ...]] = ()
    listens: ClassVar[bool] = True  # False: stream sockets are bound and never listen (refuse)
    # True: the datagram side keeps state per client (a forward's NAT table), bounded by
    # max_connections, which a UDP listener of this handler then takes.
    datagram_sessions: ClassVar[bool] = False
    # True: connections start unread so conn.lend_socket() can give a program the socket.
    takes_sockets: ClassVar[bool] = False
    # Limits this handler is safe with when the listener table does not set them, such
    # as {"idle_timeout_s": 60.0}: a listener key always wins.
    default_limits: ClassVar[Mapping[str, Any]] = {}
    # ALPN protocols a TLS listener offers for this handler unless its tls_alpn says
    # otherwise (http-hello: http/1.1, so curl and browsers know what they speak).
    alpn: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: Settings) -> None:
        """Take the validated settings and acquire what serving needs (files, threads).

        Called before any socket is bound, so a handler that cannot start leaves nothing
        open. Raise ConfigError (one line per problem) for what
        :meth:`check_settings` could not know in advance.
        """
        self.settings = settings

    @classmethod
    def check_settings(cls, settings: Settings) -> list[str]:
        """The problems ``__init__`` would raise for these settings, found without side
        effects (no directory created, no lock taken), so ``portd check`` reports every
        config ``portd serve`` refuses. One message per problem; empty when fine."""
        return []

    @classmethod
    def files_digest(cls, settings: Settings) -> str:
        """A digest of the files these settings name and :meth:`__init__` reads (a
        forward's upstream CA), "" when none: it is part of the listener's config, so a
        reload that finds such a file renewed in place (same path, new bytes) sees a
        changed listener, as it does for the ``tls_*`` files. Called once
        :meth:`check_settings` found no problem.

        Raises:
            OptionError: a file that cannot be read any more (names key and path).
        """
        return ""

    @classmethod
    def needs_root(cls, settings: Settings) -> str | None:
        """Why serving with these settings needs portd to stay root after binding (a
        program run as another user), or None. A config whose ``[daemon] user`` drops
        root is then refused at load, by ``portd check`` as by ``portd serve``."""
        return None

    @classmethod
    def check_protocol(cls, settings: Settings, protocol: ProtocolName) -> list[str]:
        """The problems of these settings on a ``protocol`` listener (an option that
        means nothing on datagrams), found at load; empty when fine."""
        return []

    def open_session(self, conn: Connection) -> StreamSession:
        """A session for a new stream connection."""
        raise NotImplementedError(f"handler {self.name!r} does not serve TCP")

    def datagram_received(self, data: bytes, peer: Peer, endpoint: DatagramEndpoint) -> None:
        """One datagram from ``peer``."""
        raise NotImplementedError(f"handler {self.name!r} does not serve UDP")

    def datagram_socket_ready(self, peer: Peer, endpoint: LendingEndpoint) -> None:
        """For a handler that ``takes_sockets``, on a datagram listener: a datagram from
        ``peer`` waits in the socket, unread. Take the socket with
        ``endpoint.lend_socket()`` (portd reads nothing until it is released), or return
        without taking it and the datagram is dropped."""
        raise NotImplementedError(f"handler {self.name!r} does not take datagram sockets")

    def start_fields(self, relay_reason: str | None) -> Mapping[str, Any]:
        """Fields for the listener's ``listener_started`` line. ``relay_reason`` names the
        listener feature that makes every byte pass through portd (``tls``,
        ``idle_timeout_s``), None when a program may hold the socket itself."""
        return {}

    def busy_response(self) -> bytes | None:
        """A few bytes to send a client turned away because the listener is full (an
        HTTP 503), or None to just close."""
        return None

    def counters(self) -> Mapping[str, int]:
        """Named counts this handler keeps beyond what portd counts for every listener
        (a forward listener's toxics applied, by toxic): ``portd status --json`` shows
        them as ``handler_events`` and /metrics exports them as
        ``portd_handler_events_total{listener, event}``. Called from the event loop, on
        each status request and scrape; keep it cheap. Default: none."""
        return {}

    def before_privilege_drop(self, uid: int, gid: int) -> None:
        """Called as root just before portd switches to ``uid``/``gid`` ([daemon] user):
        hand over what the handler created while root (a directory's owner)."""

    def after_privilege_drop(self) -> None:
        """Called once portd runs as [daemon] user: check that what the handler needs
        is within that user's reach (a directory it must write), so the daemon fails at
        start instead of on every connection.

        Raises:
            PortdError: something is out of reach (one line; the daemon exits).
        """

    def updatable(self, settings: Settings) -> bool:
        """True when this running handler can take ``settings`` in place (a reload that
        changes only those: a forward's toxics), without side effects; False (the
        default) has the listener replaced by a new one with the new settings."""
        return False

    def update(self, settings: Settings) -> None:
        """Apply ``settings`` in place (after :meth:`updatable` said True), to this
        handler and its live connections."""

    def abort_connections(self) -> None:
        """The listener aborts its connections (a drain's end, a test server's stop):
        abort what the handler opened beside them that outlives them (a proxy's
        upstream still closing after its client left). On the loop."""

    def close(self) -> None:
        """The listener stopped for good: release what the handler holds (files, fds)."""
