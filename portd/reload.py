"""Planning a reload: which listeners stay as they are, which sockets carry over, what binds.

A listener whose configuration is unchanged keeps running untouched. Any other listener
of the new config gets a fresh Listener (new handler and options for new connections);
its sockets are taken over from the running listener that has the same address (or, for
port 0, the same name and bind), so an address that stays in the config is never closed
and reopened. Only addresses nobody holds yet are bound. Running listeners that are not
kept stop accepting and finish their connections.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Sequence
from typing import NamedTuple

from portd.binds import SocketAddress
from portd.config import ListenerConfig
from portd.listeners import Listener

SocketKey = tuple[str, int, str, int, bool]


class Start(NamedTuple):
    """A listener to start: its config, sockets taken over, and addresses to bind."""

    config: ListenerConfig
    reused: dict[SocketAddress, socket.socket]
    missing: list[SocketAddress]


class ReloadPlan(NamedTuple):
    """What a reload does to the running listeners."""

    kept: list[Listener]
    started: list[Start]
    retired: list[Listener]


def socket_key(config: ListenerConfig, address: SocketAddress) -> SocketKey:
    """Identity of a bound socket: protocol, family, host, port, and whether it listens
    (a socket cannot stop listening, so ``refuse`` never takes over a listening one)."""
    return (config.protocol, address.family, address.host, address.port, config.handler.listens)


def unchanged(old: ListenerConfig, new: ListenerConfig) -> bool:
    """True when nothing but the listener's position in the file differs."""
    return dataclasses.replace(new, index=old.index) == old


def plan_reload(running: Sequence[Listener], configs: Sequence[ListenerConfig]) -> ReloadPlan:
    """Compare the running listeners with a new, validated config."""
    by_name = {listener.config.name: listener for listener in running}
    kept = [
        by_name[config.name]
        for config in configs
        if config.name in by_name and unchanged(by_name[config.name].config, config)
    ]
    pool: dict[SocketKey, socket.socket] = {}
    for listener in running:
        if listener not in kept:
            for sock, address in zip(listener.sockets, listener.addresses, strict=True):
                pool[socket_key(listener.config, address)] = sock
    started = [
        _start(config, by_name.get(config.name), pool)
        for config in configs
        if not (config.name in by_name and by_name[config.name] in kept)
    ]
    retired = [listener for listener in running if listener not in kept]
    return ReloadPlan(kept, started, retired)


def _start(
    config: ListenerConfig, old: Listener | None, pool: dict[SocketKey, socket.socket]
) -> Start:
    if (
        config.bind.port == 0
        and old is not None
        and (old.config.bind, old.config.protocol) == (config.bind, config.protocol)
        and old.config.handler.listens == config.handler.listens
        and old.sockets
    ):
        # Port 0: the same listener keeps the port the kernel gave it.
        reused = dict(zip(old.addresses, old.sockets, strict=True))
        for address in old.addresses:
            pool.pop(socket_key(config, address), None)
        return Start(config, reused, [])
    reused, missing = {}, []
    for address in config.addresses:
        sock = pool.pop(socket_key(config, address), None) if address.port else None
        if sock is None:
            missing.append(address)
        else:
            reused[address] = sock
    return Start(config, reused, missing)
