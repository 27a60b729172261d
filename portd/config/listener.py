"""One ``[[listener]]`` table -> ListenerConfig, and the checks across listeners.

Keys come from three owners: the listener itself (name, bind, protocol, handler), the
socket (portd.endpoints.settings), the limits (portd.limits), and the handler's own
options. A key that applies to another protocol or endpoint kind is a problem, as is
an unknown one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from portd.config.problems import Problems, check_options, toml_repr
from portd.endpoints import PROTOCOLS, Address, Endpoint, ProtocolName, SocketOptions
from portd.endpoints.parse import parse_endpoint
from portd.endpoints.settings import KIND_ONLY_KEYS, SOCKET_KEYS, STREAM_ONLY_KEYS, socket_options
from portd.errors import BindSyntaxError, HandlerError, OptionError
from portd.handlers.base import Handler
from portd.handlers.registry import load_handler
from portd.limits import LIMIT_KIND_ONLY, LIMIT_OPTIONS, TCP_ONLY, UDP_ONLY, Limits
from portd.options import Option, Settings
from portd.tls.settings import TLS_KEYS, TLS_OPTIONS, TLSConfig, build_tls

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
LISTENER_KEYS = (
    Option("name", str, None, "unique name used in logs and by systemd"),
    Option("bind", str, None, "[HOST:]PORT, unix:/PATH or unix:@NAME"),
    Option("protocol", str, "tcp", "transport (udp: datagrams, also on unix sockets)",
           choices=PROTOCOLS),
    Option("handler", str, None, "handler name"),
    Option("log_connections", bool, True, "log one connection_closed line per connection"),
)  # fmt: skip
LISTENER_OPTIONS = (*LISTENER_KEYS, *SOCKET_KEYS, *LIMIT_OPTIONS, *TLS_OPTIONS)
KIND_ONLY = {**KIND_ONLY_KEYS, **LIMIT_KIND_ONLY}


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One ``[[listener]]``: where to bind, what serves it, and the resolved addresses."""

    index: int
    name: str
    endpoint: Endpoint
    handler: type[Handler]
    settings: Settings
    addresses: tuple[Address, ...]
    limits: Limits = field(default_factory=Limits)
    socket_options: SocketOptions = field(default_factory=SocketOptions)
    log_connections: bool = True
    tls: TLSConfig | None = None  # a TLS layer on the stream endpoint (portd.tls)
    files_digest: str = ""  # of the files the handler reads (Handler.files_digest)

    @property
    def protocol(self) -> ProtocolName:
        """tcp (stream) or udp (datagrams)."""
        return self.endpoint.protocol

    @property
    def label(self) -> str:
        """How messages name this listener."""
        return f'listener "{self.name}"'


def build_listener(index: int, table: Any, problems: Problems) -> ListenerConfig | None:
    """Validate one ``[[listener]]`` table; problems go to ``problems``.

    Returns:
        The listener, or None when it has problems.
    """
    where = f"[[listener]] #{index}"
    if not isinstance(table, dict):
        problems.add(where, "must be a table")
        return None
    if isinstance(table.get("name"), str):
        where = f"{where} {toml_repr(table['name'])}"  # quoted and escaped: one line whatever
    before = len(problems.lines)
    handler = _check_handler(table, where, problems)
    values = check_options(table, LISTENER_OPTIONS + (handler.options if handler else ()),
                           where, problems)  # fmt: skip
    for key in ("bind", "handler"):
        if key not in table:
            problems.add(where, f"missing required key {key!r}")
    endpoint, addresses, bind_problem = _parse_endpoint(table)
    protocol: ProtocolName = endpoint.protocol if endpoint is not None else values["protocol"]
    if handler and protocol not in handler.protocols:
        allowed = ", ".join(sorted(handler.protocols))
        problems.add(where, f"handler {handler.name!r} serves {allowed} only", "protocol", protocol)
    _check_applicable(table, protocol, endpoint, where, problems, handler=handler)
    if bind_problem:
        problems.add(where, bind_problem, "bind", table.get("bind"))
    name = values["name"]
    if name is not None:
        _check_name(name, where, problems)
    if len(problems.lines) > before or handler is None or endpoint is None:
        return None
    return _complete(
        index, where, table=table, handler=handler, endpoint=endpoint, addresses=addresses,
        values=values, problems=problems,
    )  # fmt: skip


def _complete(
    index: int,
    where: str,
    *,
    table: Mapping[str, Any],
    handler: type[Handler],
    endpoint: Endpoint,
    addresses: tuple[Address, ...],
    values: dict[str, Any],
    problems: Problems,
) -> ListenerConfig | None:
    """The checks that need a valid table: socket owners, the handler's own, the name."""
    try:
        sockets = socket_options(values, listens=handler.listens)
        tls = build_tls(values, table, handler.alpn) if endpoint.protocol == "tcp" else None
    except OptionError as exc:
        problems.add(where, str(exc))
        return None
    settings = {option.name: values[option.name] for option in handler.options}
    refused = handler.check_settings(settings)  # what serve would refuse, found here too
    refused += handler.check_protocol(settings, endpoint.protocol)
    for problem in refused:
        problems.add(where, problem)
    name = values["name"] or default_name(handler.name, endpoint)
    if refused or not _check_name(name, where, problems):
        return None
    try:
        digest = handler.files_digest(settings)
    except OptionError as exc:  # a file that changed since check_settings read it
        problems.add(where, str(exc))
        return None
    limits = build_limits(values, table, handler)
    return ListenerConfig(
        index, name, endpoint, handler, settings, addresses, limits, sockets,
        values["log_connections"], tls, digest,
    )  # fmt: skip


def build_limits(
    values: Mapping[str, Any], table: Mapping[str, Any], handler: type[Handler]
) -> Limits:
    """The listener's limits: its table's, else the handler's defaults, else portd's."""
    chosen = {option.name: values[option.name] for option in LIMIT_OPTIONS}
    for key, value in handler.default_limits.items():
        if key not in table:
            chosen[key] = value
    return Limits(**chosen)


def _check_applicable(
    table: Mapping[str, Any],
    protocol: ProtocolName,
    endpoint: Endpoint | None,
    where: str,
    problems: Problems,
    *,
    handler: type[Handler] | None = None,
) -> None:
    """Keys of the other protocol, or of another endpoint kind, are problems."""
    if protocol == "udp":
        foreign, other = TCP_ONLY | STREAM_ONLY_KEYS | TLS_KEYS, "tcp"
        if handler is not None and handler.datagram_sessions:  # a forward's NAT table
            foreign = foreign - {"max_connections"}
    else:
        foreign, other = UDP_ONLY, "udp"
    for key in sorted(set(table) & foreign):
        problems.add(where, f"applies to {other} listeners only", key, table[key])
    if endpoint is None:
        return
    for key in sorted(set(table) & set(KIND_ONLY)):
        if KIND_ONLY[key] != endpoint.kind:
            problems.add(where, f"applies to {KIND_ONLY[key]} listeners only", key, table[key])


def _check_name(name: str, where: str, problems: Problems) -> bool:
    """True when ``name`` is valid; otherwise the problem is added."""
    if NAME_PATTERN.fullmatch(name):
        return True
    problems.add(where, f"expected {NAME_RULE}", "name", name)
    return False


def _check_handler(
    table: Mapping[str, Any], where: str, problems: Problems
) -> type[Handler] | None:
    name = table.get("handler")
    if not isinstance(name, str):
        return None
    try:
        handler = load_handler(name)
    except HandlerError as exc:
        problems.add(where, str(exc), "handler", name)
        return None
    taken = {option.name for option in LISTENER_OPTIONS}
    clashes = sorted(option.name for option in handler.options if option.name in taken)
    if clashes:
        problems.add(
            where, f"handler {name!r} declares options named like listener keys: "
            f"{', '.join(clashes)}", "handler", name,
        )  # fmt: skip
        return None
    return handler


def _parse_endpoint(
    table: Mapping[str, Any],
) -> tuple[Endpoint | None, tuple[Address, ...], str]:
    """The endpoint and its addresses, or the problem with ``bind`` (else "")."""
    text, stated = table.get("bind"), table.get("protocol")
    if not isinstance(text, str) or (stated is not None and stated not in PROTOCOLS):
        return None, (), ""
    try:
        endpoint: Endpoint = parse_endpoint(text, stated, absolute_paths=True)
        return endpoint, endpoint.resolve(), ""
    except BindSyntaxError as exc:
        return None, (), str(exc)


def default_name(handler: str, endpoint: Endpoint) -> str:
    """``handler-protocol-where`` with characters systemd cannot take replaced."""
    text = f"{handler}-{endpoint.protocol}-{endpoint.name_part()}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:64]


def check_names(listeners: list[ListenerConfig], problems: Problems) -> None:
    """Listener names are unique."""
    seen: dict[str, ListenerConfig] = {}
    for listener in listeners:
        first = seen.setdefault(listener.name, listener)
        if first is not listener:
            problems.add(
                f'[[listener]] #{listener.index} "{listener.name}"',
                f"duplicate name; [[listener]] #{first.index} already has it",
                "name",
                listener.name,
            )


def check_conflicts(listeners: list[ListenerConfig], problems: Problems) -> None:
    """Two listeners on one protocol whose addresses overlap cannot both bind."""
    groups: dict[tuple[str, Any], list[tuple[ListenerConfig, Address]]] = {}
    for listener in listeners:
        if listener.endpoint.is_ephemeral:
            continue
        clash = _find_clash(listener, groups)
        if clash is not None:
            other, address, theirs = clash
            problems.add(
                f'[[listener]] #{listener.index} "{listener.name}"',
                f"{address} overlaps {theirs} of [[listener]] #{other.index} "
                f'"{other.name}" ({listener.protocol})',
                "bind",
                str(listener.endpoint),
            )
            continue
        for address in listener.addresses:
            key = (listener.protocol, address.overlap_group)
            groups.setdefault(key, []).append((listener, address))


def _find_clash(
    listener: ListenerConfig, groups: dict[tuple[str, Any], list[tuple[ListenerConfig, Address]]]
) -> tuple[ListenerConfig, Address, Address] | None:
    for address in listener.addresses:
        for other, theirs in groups.get((listener.protocol, address.overlap_group), ()):
            if address.overlaps(theirs):
                return other, address, theirs
    return None
