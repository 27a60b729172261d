"""TOML config -> Config: every problem found at load, before any socket is opened.

Each problem is one line naming the file, the table (listener index and name), the
key, the value and what is allowed; all of them are reported together in one
ConfigError.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portd.binds import PROTOCOLS, BindSpec, Protocol, SocketAddress, parse_bind, resolve_bind
from portd.errors import BindSyntaxError, ConfigError, HandlerError, OptionError
from portd.handlers.base import Handler
from portd.handlers.registry import load_handler
from portd.limits import LIMIT_OPTIONS, TCP_ONLY, UDP_ONLY, Limits
from portd.options import Option, Settings, defaults

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_CONFIG_BYTES = 16 << 20  # a config is text; anything bigger is a mistake or an attack
FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}
NAME_RULE = "1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"

DAEMON_OPTIONS = (
    Option(
        "log_format",
        str,
        "auto",
        "console on a terminal, JSON lines otherwise",
        choices=("auto", "console", "json"),
    ),
    Option(
        "log_level",
        str,
        "info",
        "lowest level logged",
        choices=("debug", "info", "warning", "error", "critical"),
    ),
    Option(
        "shutdown_timeout_s",
        float,
        10.0,
        "how long live connections may finish on stop",
        minimum=0,
        maximum=86400,
    ),
    Option(
        "loop",
        str,
        "auto",
        "event loop: uvloop when installed (auto), or asyncio",
        choices=("auto", "uvloop", "asyncio"),
    ),
    Option("user", str, "", "after binding, switch to this user (name or uid; needs root)"),
    Option(
        "control_socket",
        str,
        "auto",
        "status socket path; auto: $RUNTIME_DIRECTORY/control.sock under systemd, else off",
    ),
    Option("group", str, "", "with user: this group (name or gid; default: the user's)"),
    Option(
        "control_socket_abstract",
        bool,
        False,
        "allow an abstract control_socket (@name), which any local user can reach",
    ),
)
LISTENER_OPTIONS = (
    *LIMIT_OPTIONS,
    Option("name", str, None, "unique name used in logs and by systemd"),
    Option("bind", str, None, "[HOST:]PORT"),
    Option("protocol", str, "tcp", "transport", choices=PROTOCOLS),
    Option("handler", str, None, "handler name"),
    Option("backlog", int, 1024, "pending-connection queue length (tcp)", minimum=1, maximum=65535),
    Option("log_connections", bool, True, "log one connection_closed line per connection"),
)


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """The ``[daemon]`` table."""

    log_format: str = "auto"
    log_level: str = "info"
    shutdown_timeout_s: float = 10.0
    loop: str = "auto"
    user: str = ""
    group: str = ""
    control_socket: str = "auto"
    control_socket_abstract: bool = False


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One ``[[listener]]``: where to bind, what serves it, and the resolved addresses."""

    index: int
    name: str
    bind: BindSpec
    protocol: Protocol
    handler: type[Handler]
    backlog: int
    settings: Settings
    addresses: tuple[SocketAddress, ...]
    limits: Limits = field(default_factory=Limits)
    log_connections: bool = True

    @property
    def label(self) -> str:
        """How messages name this listener."""
        return f'listener "{self.name}"'


@dataclass(frozen=True, slots=True)
class Config:
    """A whole validated config file."""

    source: str
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    listeners: tuple[ListenerConfig, ...] = ()


class _Problems:
    """Collects one-line problems, each prefixed with the file name."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, where: str, message: str, key: str | None = None, value: Any = None) -> None:
        setting = f" {key} = {_toml(value)}:" if key is not None else ""
        self.lines.append(f"{self.source}: {where}:{setting} {message}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError(self.lines)


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, list):
        return "[...]"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # TOML spells inf, -inf and nan as Python does; JSON has no spelling
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a config file.

    Blocking (file I/O, host-name resolution, handler imports): the daemon calls it off
    the event loop.

    Raises:
        ConfigError: the file cannot be read, is not a regular file or is too big, is not
            TOML, or has problems (all listed).
    """
    source = str(path)
    return parse_config_text(read_config_text(source), source)


def parse_config_text(text: str, source: str) -> Config:
    """Parse and validate config text (``source`` names it in messages).

    Raises:
        ConfigError: not TOML, or problems (all listed).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: TOML syntax error: {exc}"]) from exc
    except RecursionError:
        raise ConfigError([f"{source}: TOML nested too deeply to read"]) from None
    except ValueError as exc:  # tomllib lets Python's 4,300-digit integer limit through
        raise ConfigError([f"{source}: TOML value cannot be read (an integer that long?)"]) from exc
    return parse_config(data, source)


def read_stdin_config() -> str:
    """A config piped in (``portd check -``), with the limits of a config file.

    Raises:
        ConfigError: more than MAX_CONFIG_BYTES, or not UTF-8.
    """
    import sys

    raw = sys.stdin.buffer.read(MAX_CONFIG_BYTES + 1)
    return _decode_config(raw, "<stdin>")


def read_config_text(source: str) -> str:
    """The text of a config file: a regular file of at most MAX_CONFIG_BYTES of UTF-8.

    Opened non-blocking, so a FIFO or a device in its place is refused instead of
    blocking (or, for /dev/zero, filling memory).

    Raises:
        ConfigError: one line naming the file and the reason.
    """
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:  # ValueError: NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ConfigError([f"{source}: cannot read config: {reason}"]) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise ConfigError([f"{source}: cannot read config: {kind}, not a regular file"])
    with os.fdopen(fd, "rb") as file:
        try:
            raw = file.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError([f"{source}: cannot read config: {exc.strerror}"]) from exc
    return _decode_config(raw, source)


def _decode_config(raw: bytes, source: str) -> str:
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{source}: config is larger than {MAX_CONFIG_BYTES >> 20} MiB"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not UTF-8 text: {exc.reason}"]) from exc


def parse_config(data: Mapping[str, Any], source: str) -> Config:
    """Validate already-parsed TOML data (``source`` names it in messages).

    Raises:
        ConfigError: every problem found, one line each.
    """
    problems = _Problems(source)
    for key in data:
        if key not in ("daemon", "listener"):
            problems.add("top level", f"unknown table [{key}]; expected [daemon] and [[listener]]")
    daemon = _build_daemon(data.get("daemon", {}), problems)
    tables = data.get("listener", [])
    if not isinstance(tables, list) or not tables:
        problems.add("top level", "no [[listener]] tables; declare at least one listener")
        tables = []
    listeners = [
        listener
        for index, table in enumerate(tables, start=1)
        if (listener := build_listener(index, table, problems)) is not None
    ]
    _check_names(listeners, problems)
    _check_conflicts(listeners, problems)
    problems.raise_if_any()
    return Config(source, daemon, tuple(listeners))


def _build_daemon(table: Any, problems: _Problems) -> DaemonConfig:
    if not isinstance(table, dict):
        problems.add("[daemon]", "must be a table")
        return DaemonConfig()
    values = _check_options(table, DAEMON_OPTIONS, "[daemon]", problems)
    _check_control_socket(values, problems)
    return DaemonConfig(**values)


def _check_control_socket(values: dict[str, Any], problems: _Problems) -> None:
    path = values["control_socket"]
    if path in ("auto", "") or not isinstance(path, str):
        return
    if path.startswith("@"):
        if not values["control_socket_abstract"]:
            problems.add(
                "[daemon]", "an abstract name can be reached by any local user; "
                "set control_socket_abstract = true to allow it", "control_socket", path,
            )  # fmt: skip
        return
    if not path.startswith("/") or "\0" in path:
        problems.add(
            "[daemon]", 'expected an absolute path, "@name", "auto" or "" (off)',
            "control_socket", path,
        )  # fmt: skip


def _check_options(
    table: Mapping[str, Any], options: tuple[Option, ...], where: str, problems: _Problems
) -> dict[str, Any]:
    known = {option.name: option for option in options}
    values = defaults(options)
    for name in (option.name for option in options if option.required and option.name not in table):
        problems.add(where, f"missing required key {name!r} ({known[name].help})")
    for key, value in table.items():
        option = known.get(key)
        if option is None:
            allowed = ", ".join(sorted(known))
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.add(where, f"unknown key; {hint}allowed keys: {allowed}", key, value)
            continue
        try:
            values[key] = option.check(value)
        except OptionError as exc:
            problems.add(where, str(exc), key, value)
    return values


def build_listener(index: int, table: Any, problems: _Problems) -> ListenerConfig | None:
    """Validate one ``[[listener]]`` table; problems go to ``problems``.

    Returns:
        The listener, or None when it has problems.
    """
    where = f"[[listener]] #{index}"
    if not isinstance(table, dict):
        problems.add(where, "must be a table")
        return None
    if isinstance(table.get("name"), str):
        where = f"{where} {_toml(table['name'])}"  # quoted and escaped: one line whatever the name
    before = len(problems.lines)
    handler = _check_handler(table, where, problems)
    options = LISTENER_OPTIONS + (handler.options if handler else ())
    values = _check_options(table, options, where, problems)
    for key in ("bind", "handler"):
        if key not in table:
            problems.add(where, f"missing required key {key!r}")
    protocol: Protocol = values["protocol"]
    if handler and protocol not in handler.protocols:
        allowed = ", ".join(sorted(handler.protocols))
        problems.add(where, f"handler {handler.name!r} serves {allowed} only", "protocol", protocol)
    foreign, other = ((TCP_ONLY | {"backlog"}), "tcp") if protocol == "udp" else (UDP_ONLY, "udp")
    for key in sorted(set(table) & foreign):
        problems.add(where, f"applies to {other} listeners only", key, table[key])
    bind, addresses = _check_bind(table.get("bind"), protocol, where, problems)
    name = values["name"]
    if name is not None:
        _check_name(name, where, problems)
    if len(problems.lines) > before or handler is None or bind is None:
        return None
    if name is None:
        name = default_name(handler.name, protocol, bind)
        if not _check_name(name, where, problems):
            return None
    settings = {option.name: values[option.name] for option in handler.options}
    limits = Limits(**{option.name: values[option.name] for option in LIMIT_OPTIONS})
    return ListenerConfig(
        index, name, bind, protocol, handler, values["backlog"], settings, addresses, limits,
        values["log_connections"],
    )  # fmt: skip


def _check_name(name: str, where: str, problems: _Problems) -> bool:
    """True when ``name`` is valid; otherwise the problem is added."""
    if NAME_PATTERN.fullmatch(name):
        return True
    problems.add(where, f"expected {NAME_RULE}", "name", name)
    return False


def _check_handler(
    table: Mapping[str, Any], where: str, problems: _Problems
) -> type[Handler] | None:
    name = table.get("handler")
    if not isinstance(name, str):
        return None
    try:
        return load_handler(name)
    except HandlerError as exc:
        problems.add(where, str(exc), "handler", name)
        return None


def _check_bind(
    text: Any, protocol: Protocol, where: str, problems: _Problems
) -> tuple[BindSpec | None, tuple[SocketAddress, ...]]:
    if not isinstance(text, str):
        return None, ()
    try:
        bind = parse_bind(text, protocol)
        return bind, tuple(resolve_bind(bind, protocol))
    except BindSyntaxError as exc:
        problems.add(where, f"{exc}", "bind", text)
        return None, ()


def default_name(handler: str, protocol: Protocol, bind: BindSpec) -> str:
    """``handler-protocol-host-port`` with characters systemd cannot take replaced."""
    host = "any" if bind.is_wildcard else bind.host
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{handler}-{protocol}-{host}-{bind.port}")[:64]


def _check_names(listeners: list[ListenerConfig], problems: _Problems) -> None:
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


def _check_conflicts(listeners: list[ListenerConfig], problems: _Problems) -> None:
    """Two listeners on one protocol and port whose addresses overlap cannot both bind."""
    by_port: dict[tuple[str, int], list[tuple[ListenerConfig, SocketAddress]]] = {}
    for listener in listeners:
        if listener.bind.port == 0:
            continue
        claimed = by_port.setdefault((listener.protocol, listener.bind.port), [])
        clash = _find_clash(listener, claimed)
        if clash is not None:
            other, address, theirs = clash
            problems.add(
                f'[[listener]] #{listener.index} "{listener.name}"',
                f"{address} overlaps {theirs} of [[listener]] #{other.index} "
                f'"{other.name}" ({listener.protocol})',
                "bind",
                str(listener.bind),
            )
            continue
        claimed.extend((listener, address) for address in listener.addresses)


def _find_clash(
    listener: ListenerConfig, claimed: list[tuple[ListenerConfig, SocketAddress]]
) -> tuple[ListenerConfig, SocketAddress, SocketAddress] | None:
    for address in listener.addresses:
        for other, theirs in claimed:
            same_family = address.family == theirs.family
            if same_family and (
                address.host == theirs.host or address.is_wildcard or theirs.is_wildcard
            ):
                return other, address, theirs
    return None
