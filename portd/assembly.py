"""Config + sockets -> listeners: the one path the daemon, reloads, the testing API and
``portd listen --handler`` share.

All or nothing, in this order:

1. every listener's handler is built (it acquires what it needs: a directory, threads)
   before any socket is bound, so a handler that cannot start leaves no socket open;
2. each listener's sockets are taken as planned: inherited from systemd, handed over
   by the listener a reload replaces, or bound now;
3. the Listener objects are made; they own handler and sockets from then on.

A failure closes everything made so far, and every listener that failed is reported,
not only the first.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from portd.config import ListenerConfig
from portd.errors import PortdError, one_or_all
from portd.handlers.base import Handler
from portd.limits import Tally
from portd.listeners import Listener


class SocketPlan(NamedTuple):
    """Where one listener's sockets come from.

    ``taken`` maps addresses (by key) to sockets that already exist (inherited, or
    handed over on a reload); ``missing`` are bound now. ``origin`` names the source
    in ``listener_started``: bound, inherited or reused. ``owned``: portd made the
    sockets' files and removes them when done (never one systemd made).
    """

    taken: Mapping[Any, socket.socket]
    missing: tuple[Any, ...]
    origin: str = "bound"
    owned: bool = True


def plan_bind(config: ListenerConfig) -> SocketPlan:
    """Bind every address of the listener."""
    return SocketPlan({}, tuple(config.addresses))


def plan_taken(sockets: Sequence[socket.socket], origin: str) -> SocketPlan:
    """Use these sockets as they are (socket activation)."""
    return SocketPlan(dict(enumerate(sockets)), (), origin, owned=False)


def build_handlers(configs: Sequence[ListenerConfig]) -> list[Handler]:
    """Every listener's handler, or none.

    Raises:
        PortdError: each listener whose handler could not start, named.
    """
    built: list[Handler] = []
    errors: list[PortdError] = []
    for config in configs:
        try:
            built.append(config.handler(config.settings))
        except PortdError as exc:
            errors.append(exc.concerning(config.label))
        except BaseException:
            _close_handlers(built)
            raise
    if errors:
        _close_handlers(built)
        raise one_or_all(errors)
    return built


def assemble(
    configs: Sequence[ListenerConfig],
    plans: Mapping[str, SocketPlan],
    next_conn_id: Callable[[], int],
    *,
    previous: Mapping[str, Listener] | None = None,
    log: Callable[[ListenerConfig], Any] | None = None,
    tally: Callable[[ListenerConfig], Tally | None] | None = None,
) -> list[Listener]:
    """Build the handlers, take or bind the sockets, make the listeners; all or nothing.

    Args:
        configs: the listeners to make, in order.
        plans: per listener name, where its sockets come from (default: bind them all).
        next_conn_id: connection ids, shared by every listener of the daemon.
        previous: per name, the running listener a reload replaces (its live counts
            carry over).
        log: a logger per listener (the testing API's); default: the daemon's.
        tally: where a listener without a predecessor counts its live connections (a
            worker's, shared with the daemon's other workers); default: its own.

    Raises:
        BindError, PortdError: every listener that failed, named; nothing stays open.
    """
    handlers = build_handlers(configs)
    try:
        sockets = open_planned(configs, plans)
    except BaseException:
        _close_handlers(handlers)
        raise
    previous = previous or {}
    return [
        Listener(
            config,
            handler,
            sockets[config.name],
            next_conn_id,
            origin=plans.get(config.name, plan_bind(config)).origin,
            owned=plans.get(config.name, plan_bind(config)).owned,
            log=log(config) if log is not None else None,
            previous=previous.get(config.name),
            tally=tally(config) if tally is not None else None,
        )
        for config, handler in zip(configs, handlers, strict=True)
    ]


def open_planned(
    configs: Sequence[ListenerConfig], plans: Mapping[str, SocketPlan]
) -> dict[str, list[socket.socket]]:
    """Each listener's sockets: the planned ones taken, the missing ones bound; all or
    nothing. On failure only what was bound here is closed: taken sockets stay with
    whoever handed them in (a running listener, the caller holding inherited ones).

    Raises:
        BindError: every listener that could not be bound.
    """
    opened: dict[str, list[socket.socket]] = {}
    fresh: list[socket.socket] = []
    errors: list[PortdError] = []
    try:
        for config in configs:
            plan = plans.get(config.name) or plan_bind(config)
            try:
                bound = bind(config, plan.missing) if plan.missing else []
            except PortdError as exc:
                errors.append(exc.concerning(config.label))
                continue
            fresh.extend(bound)
            opened[config.name] = [*plan.taken.values(), *bound]
    except BaseException:
        _close(fresh)
        raise
    if errors:
        _close(fresh)
        raise one_or_all(errors)
    return opened


def bind(config: ListenerConfig, addresses: Sequence[Any]) -> list[socket.socket]:
    """Bind ``addresses`` of one listener, all or nothing; the caller owns the sockets.

    Raises:
        BindError: and its kinds, naming the listener and the address.
    """
    return config.endpoint.open_sockets(addresses, config.socket_options, config.label)


def _close_handlers(handlers: Sequence[Handler]) -> None:
    for handler in handlers:
        handler.close()


def _close(sockets: Sequence[socket.socket]) -> None:
    for sock in sockets:
        sock.close()
