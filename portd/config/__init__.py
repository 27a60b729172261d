"""TOML config -> Config: every problem found at load, before any socket is opened.

Each problem is one line naming the file, the table (listener index and name), the
key, the value and what is allowed; all of them are reported together in one
ConfigError. ``daemon`` owns the ``[daemon]`` table, ``listener`` the ``[[listener]]``
tables and the checks across them, ``problems`` how problems are collected.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from portd.config.daemon import DAEMON_OPTIONS, DaemonConfig, build_daemon
from portd.config.listener import (
    LISTENER_OPTIONS,
    ListenerConfig,
    build_listener,
    check_conflicts,
    check_names,
    default_name,
)
from portd.config.problems import Problems
from portd.errors import ConfigError

__all__ = [
    "DAEMON_OPTIONS",
    "LISTENER_OPTIONS",
    "Config",
    "DaemonConfig",
    "ListenerConfig",
    "default_name",
    "load_config",
    "parse_config",
    "parse_config_text",
    "read_config_text",
    "read_stdin_config",
]

MAX_CONFIG_BYTES = 16 << 20  # a config is text; anything bigger is a mistake or an attack
FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


@dataclass(frozen=True, slots=True)
class Config:
    """A whole validated config file."""

    source: str
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    listeners: tuple[ListenerConfig, ...] = ()
    # What was parsed, when it came as text: a parent hands its workers exactly this,
    # never the file again (which may have changed since).
    text: str = field(default="", compare=False, repr=False)


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
    return replace(parse_config(data, source), text=text)


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
    problems = Problems(source)
    for key in data:
        if key not in ("daemon", "listener"):
            problems.add("top level", f"unknown table [{key}]; expected [daemon] and [[listener]]")
    daemon = build_daemon(data.get("daemon", {}), problems)
    tables = data.get("listener", [])
    if not isinstance(tables, list) or (not tables and not daemon.toxiproxy_api):
        # The toxiproxy API makes listeners of its own: a config may have none then.
        problems.add("top level", "no [[listener]] tables; declare at least one listener")
        tables = []
    listeners = [
        listener
        for index, table in enumerate(tables, start=1)
        if (listener := build_listener(index, table, problems)) is not None
    ]
    check_names(listeners, problems)
    check_conflicts(listeners, problems)
    _check_root_kept(daemon, listeners, problems)
    problems.raise_if_any()
    return Config(source, daemon, tuple(listeners))


def _check_root_kept(
    daemon: DaemonConfig, listeners: list[ListenerConfig], problems: Problems
) -> None:
    """A handler that needs root (a program run as another user) cannot serve once
    ``[daemon] user`` has dropped it."""
    if not daemon.user:
        return
    for listener in listeners:
        reason = listener.handler.needs_root(listener.settings)
        if reason:
            problems.add(
                f'[[listener]] #{listener.index} "{listener.name}"',
                f"{reason}, which needs root; [daemon] user = {daemon.user!r} drops root "
                "after binding (leave [daemon] user unset)",
            )
