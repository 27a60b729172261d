"""Which sockets each worker slot serves.

A listener's sockets, as the parent bound them (or systemd passed them), are shared
by every worker: each accepts on the same socket. With ``reuse_port = true`` slot 0
serves the listener's own sockets and every other slot a socket of its own per
address, bound to the same address with SO_REUSEPORT, so the kernel spreads new
connections over the slots. The parent holds every socket for the life of the
listener: a worker that restarts, or the worker that takes its slot on a reload,
gets the very same socket with whatever waits in its queue, so a reload refuses no
one. Sockets passed by systemd are shared as they are (one socket per address).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence

from portd.endpoints.base import Address
from portd.errors import PortdError
from portd.listeners import Listener
from portd.reload import SocketKey, socket_key


class SlotSockets:
    """The SO_REUSEPORT sockets of slots 1 to N-1, by listener address."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.extra: dict[SocketKey, list[socket.socket]] = {}

    def bind(self, listeners: Iterable[Listener]) -> None:
        """Open the other slots' sockets of every ``reuse_port`` listener that has none
        yet (a reload keeps those of addresses it keeps); all or nothing.

        Raises:
            BindError: an address could not be bound again (naming the listener).
        """
        opened: list[SocketKey] = []
        try:
            for listener in listeners:
                for key, address in self._wanted(listener):
                    self.extra[key] = self._open(listener, address)
                    opened.append(key)
        except BaseException:
            for key in opened:
                for sock in self.extra.pop(key):
                    sock.close()
            raise

    def _wanted(self, listener: Listener) -> list[tuple[SocketKey, Address]]:
        config = listener.config
        if not config.socket_options.reuse_port or listener.origin == "inherited":
            return []
        keys = [(socket_key(config, address), address) for address in listener.addresses]
        return [(key, address) for key, address in keys if key not in self.extra]

    def _open(self, listener: Listener, address: Address) -> list[socket.socket]:
        config = listener.config
        opened: list[socket.socket] = []
        try:
            for _ in range(self.slots - 1):
                opened += config.endpoint.open_sockets([address], config.socket_options,
                                                       config.label)  # fmt: skip
        except PortdError:
            for sock in opened:
                sock.close()
            raise
        return opened

    def for_slot(self, listeners: Sequence[Listener], slot: int) -> list[tuple[str, socket.socket]]:
        """(listener name, socket) for every socket the worker in ``slot`` serves."""
        pairs = []
        for listener in listeners:
            keys = [socket_key(listener.config, address) for address in listener.addresses]
            for key, sock in zip(keys, listener.sockets, strict=True):
                extra = self.extra.get(key)
                pairs.append((listener.name, extra[slot - 1] if slot and extra else sock))
        return pairs

    def keep_only(self, listeners: Iterable[Listener]) -> None:
        """Close the slot sockets of addresses no listener has any more (after a reload;
        old workers keep their own descriptors until they stop accepting)."""
        wanted = {socket_key(x.config, address) for x in listeners for address in x.addresses}
        for key in [key for key in self.extra if key not in wanted]:
            for sock in self.extra.pop(key):
                sock.close()

    def close(self) -> None:
        """Close every slot socket (idempotent)."""
        self.keep_only(())
