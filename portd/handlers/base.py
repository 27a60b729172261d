"""The handler contract: what a handler declares and what the server offers it.

A handler is a class. The server makes one instance per listener from validated
settings, then for TCP asks it for a :class:`StreamSession` per connection and for UDP
passes it each datagram. The server owns every socket: a session never closes the
transport behind the server's back, and however a session ends (returns, raises, peer
vanishes) the server closes the connection and logs one ``connection_closed`` line.

Sessions are driven by callbacks from the event loop, like :class:`asyncio.Protocol`,
because the per-byte path must stay cheap; a handler that needs to wait on something
schedules its own work and reports back through the :class:`Connection`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from portd.binds import Protocol as TransportProtocol
from portd.options import Option, Settings

Peer = tuple[Any, ...]


class Connection(Protocol):
    """What the server offers a stream session."""

    conn_id: int

    @property
    def peer(self) -> str:
        """``host:port`` of the peer."""

    @property
    def log(self) -> Any:
        """A structlog logger bound to the listener, ``conn_id`` and ``peer``."""

    @property
    def draining(self) -> bool:
        """True once the daemon is stopping: finish the current exchange, then close."""

    def write(self, data: bytes) -> None:
        """Queue bytes for the peer; watch pause_writing to keep the queue bounded."""

    def get_write_buffer_size(self) -> int:
        """Bytes queued and not yet handed to the kernel."""

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


class DatagramEndpoint(Protocol):
    """What the server offers a datagram handler."""

    @property
    def log(self) -> Any:
        """A structlog logger bound to the listener."""

    def send(self, data: bytes, peer: Peer) -> bool:
        """Send one datagram; False when it was dropped because the socket is backed up."""


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


class Handler:
    """Base class for handlers.

    Subclasses set ``name``, ``protocols`` and ``options`` and implement
    :meth:`open_session` (TCP) and/or :meth:`datagram_received` (UDP).
    """

    name: ClassVar[str]
    protocols: ClassVar[frozenset[TransportProtocol]]
    options: ClassVar[tuple[Option, ...]] = ()
    listens: ClassVar[bool] = True  # False: TCP sockets are bound and never listen (refuse)
    # Limits this handler is safe with when the listener table does not set them, such
    # as {"idle_timeout_s": 60.0}: a listener key always wins.
    default_limits: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def open_session(self, conn: Connection) -> StreamSession:
        """A session for a new TCP connection."""
        raise NotImplementedError(f"handler {self.name!r} does not serve TCP")

    def datagram_received(self, data: bytes, peer: Peer, endpoint: DatagramEndpoint) -> None:
        """One UDP datagram from ``peer``."""
        raise NotImplementedError(f"handler {self.name!r} does not serve UDP")

    def busy_response(self) -> bytes | None:
        """A few bytes to send a client turned away because the listener is full (an
        HTTP 503), or None to just close."""
        return None

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

    def close(self) -> None:
        """The listener stopped for good: release what the handler holds (files, fds)."""
