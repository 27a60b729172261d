"""The ``[daemon]`` table: process-wide settings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from portd.config.problems import Problems, check_options
from portd.options import Option

DAEMON_OPTIONS = (
    Option("log_format", str, "auto", "console on a terminal, JSON lines otherwise",
           choices=("auto", "console", "json")),
    Option("log_level", str, "info", "lowest level logged",
           choices=("debug", "info", "warning", "error", "critical")),
    Option("shutdown_timeout_s", float, 10.0, "how long live connections may finish on stop",
           minimum=0, maximum=86400),
    Option("loop", str, "auto", "event loop: uvloop when installed (auto), or asyncio",
           choices=("auto", "uvloop", "asyncio")),
    Option("user", str, "", "after binding, switch to this user (name or uid; needs root)"),
    Option("control_socket", str, "auto",
           "status socket path; auto: $RUNTIME_DIRECTORY/control.sock under systemd, else off"),
    Option("group", str, "", "with user: this group (name or gid; default: the user's)"),
    Option("control_socket_abstract", bool, False,
           "allow an abstract control_socket (@name), which any local user can reach"),
    Option("toxiproxy_api", str, "", 'serve toxiproxy\'s HTTP API here, e.g. "127.0.0.1:8474"; '
           '"" off'),
    Option("toxiproxy_api_remote", bool, False,
           "allow a toxiproxy_api address that is not loopback (anyone reaching it can "
           "open ports and redirect traffic)"),
)  # fmt: skip


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
    toxiproxy_api: str = ""
    toxiproxy_api_remote: bool = False


def build_daemon(table: Any, problems: Problems) -> DaemonConfig:
    """Validate the ``[daemon]`` table; problems go to ``problems``."""
    if not isinstance(table, dict):
        problems.add("[daemon]", "must be a table")
        return DaemonConfig()
    values = check_options(table, DAEMON_OPTIONS, "[daemon]", problems)
    _check_control_socket(values, problems)
    if values["toxiproxy_api"]:
        from portd.toxiproxy.address import api_address_problem

        reason = api_address_problem(values["toxiproxy_api"], values["toxiproxy_api_remote"])
        if reason:
            problems.add("[daemon]", reason, "toxiproxy_api", values["toxiproxy_api"])
    for key in ("user", "group"):
        reason = account_problem(values[key])
        if reason:
            problems.add("[daemon]", reason, key, values[key])
    return DaemonConfig(**values)


MAX_ACCOUNT_ID = 4294967294  # (uid_t)-1 = 4294967295 tells setresuid "leave unchanged"
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,255}\$?")


def account_problem(value: Any) -> str | None:
    """Why ``value`` cannot name a user or group ([daemon] user/group), or None."""
    if not isinstance(value, str) or not value:
        return None
    if value.isascii() and value.isdigit():
        if len(value) > len(str(MAX_ACCOUNT_ID)) or int(value) > MAX_ACCOUNT_ID:
            return (
                f"expected an id from 0 to {MAX_ACCOUNT_ID} (4294967295 means "
                '"leave unchanged" to the kernel, so the drop would keep root\'s id)'
            )
        return None
    if ACCOUNT_NAME.fullmatch(value) is None:
        return "expected a user or group name (letters, digits . _ -) or a number"
    return None


def _check_control_socket(values: dict[str, Any], problems: Problems) -> None:
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
