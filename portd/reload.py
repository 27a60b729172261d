"""Planning a reload: which listeners stay as they are, which sockets carry over, what binds.

A listener whose configuration is unchanged keeps running untouched. Any other listener
of the new config gets a fresh Listener (new handler and options for new connections);
its sockets are taken over from the running listener that has the same address (by the
endpoint's ``Address.key``; for a kernel-chosen address, port 0, from the listener of
the same name and endpoint), so an address that stays in the config is never closed and
reopened. Only addresses nobody holds yet are bound. Running listeners that are not
kept stop accepting and finish their connections.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Hashable, Sequence
from typing import NamedTuple

from portd.assembly import SocketPlan
from portd.config import ListenerConfig
from portd.listeners import Listener


class Start(NamedTuple):
    """A listener to start: its config, the running one it replaces, and its sockets."""

    config: ListenerConfig
    previous: Listener | None
    plan: SocketPlan


class ReloadPlan(NamedTuple):
    """What a reload does to the running listeners."""

    kept: list[Listener]
    started: list[Start]
    retired: list[Listener]
    updated: tuple[tuple[Listener, ListenerConfig], ...] = ()  # kept; handlers take new settings

    @property
    def handed_over(self) -> set[socket.socket]:
        """Sockets that move from a retired listener to a started one."""
        return {sock for start in self.started for sock in start.plan.taken.values()}


SocketKey = tuple[str, Hashable, bool]


def socket_key(config: ListenerConfig, address: object) -> SocketKey:
    """Identity of a bound socket: protocol, address key, and whether it listens (a
    socket cannot stop listening, so ``refuse`` never takes over a listening one)."""
    return (config.protocol, address.key, config.handler.listens)  # type: ignore[attr-defined]


def unchanged(old: ListenerConfig, new: ListenerConfig) -> bool:
    """True when nothing but the listener's position in the file differs."""
    return dataclasses.replace(new, index=old.index) == old


def updatable(old: Listener, new: ListenerConfig) -> bool:
    """True when only the handler's settings differ and the running handler takes them
    in place (a forward's toxics): its connections and sockets stay untouched."""
    same = dataclasses.replace(new, index=old.config.index, settings=old.config.settings)
    return same == old.config and old.handler.updatable(new.settings)


def plan_reload(running: Sequence[Listener], configs: Sequence[ListenerConfig]) -> ReloadPlan:
    """Compare the running listeners with a new, validated config."""
    by_name = {listener.config.name: listener for listener in running}
    kept = [
        by_name[config.name]
        for config in configs
        if config.name in by_name and unchanged(by_name[config.name].config, config)
    ]
    updated = [
        (by_name[config.name], config)
        for config in configs
        if config.name in by_name
        and by_name[config.name] not in kept
        and updatable(by_name[config.name], config)
    ]
    kept += [listener for listener, _ in updated]
    pool: dict[SocketKey, tuple[socket.socket, bool]] = {}  # -> (socket, portd made its file)
    for listener in running:
        if listener not in kept:
            for sock, address in zip(listener.sockets, listener.addresses, strict=True):
                pool[socket_key(listener.config, address)] = (sock, listener.owned)
    started = [
        _start(config, by_name.get(config.name), pool)
        for config in configs
        if not (config.name in by_name and by_name[config.name] in kept)
    ]
    retired = [listener for listener in running if listener not in kept]
    return ReloadPlan(kept, started, retired, tuple(updated))


def _start(
    config: ListenerConfig,
    old: Listener | None,
    pool: dict[SocketKey, tuple[socket.socket, bool]],
) -> Start:
    if (
        config.endpoint.is_ephemeral
        and old is not None
        and old.config.endpoint == config.endpoint
        and old.config.handler.listens == config.handler.listens
        and old.sockets
    ):
        # Port 0: the same listener keeps the address the kernel gave it.
        for address in old.addresses:
            pool.pop(socket_key(config, address), None)
        taken = {a.key: sock for a, sock in zip(old.addresses, old.sockets, strict=True)}
        return Start(config, old, SocketPlan(taken, (), "reused", old.owned))
    taken, missing, owned = {}, [], True
    for address in config.addresses:
        found = (
            None if config.endpoint.is_ephemeral else pool.pop(socket_key(config, address), None)
        )
        if found is None:
            missing.append(address)
        else:
            taken[address.key], mine = found
            owned = owned and mine
    origin = "reused" if taken else "bound"
    return Start(config, old, SocketPlan(taken, tuple(missing), origin, owned))
