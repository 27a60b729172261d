"""The ``[daemon]`` table: process-wide settings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from portd.config.problems import Problems, check_options
from portd.errors import OptionError
from portd.options import Option

MAX_WORKERS = 1024
WORKERS_RULE = f'expected an integer from 1 to {MAX_WORKERS}, or "auto" (one per usable CPU)'


def parse_workers(value: Any) -> int | str:
    """``[daemon] workers``: 1 to MAX_WORKERS, or ``"auto"``.

    Raises:
        OptionError: anything else.
    """
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS:
        return value
    raise OptionError(WORKERS_RULE)


def worker_count(setting: int | str) -> int:
    """How many workers ``setting`` asks for here: ``auto`` counts the CPUs this process
    may run on (its affinity mask, which taskset, cpusets and containers narrow), not
    the CPUs the machine has."""
    if setting != "auto":
        return int(setting)
    import os

    return max(1, len(os.sched_getaffinity(0)))


def metrics_bind(value: str) -> str:
    """The bind of ``[daemon] metrics``: a bare port is on loopback (127.0.0.1:PORT),
    never on every interface as a listener's bare port is."""
    return f"127.0.0.1:{value}" if value.isascii() and value.isdigit() else value


def check_metrics_address(value: str) -> str:
    """``""`` or what the bind grammar accepts for a TCP socket.

    Raises:
        OptionError: the bind grammar's reason.
    """
    if value:
        from portd.endpoints.parse import parse_endpoint
        from portd.errors import PortdError

        try:
            parse_endpoint(metrics_bind(value), "tcp", absolute_paths=True)
        except PortdError as exc:
            raise OptionError(str(exc)) from None
    return value


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
    Option("workers", object, 1, 'worker processes: a number, or "auto" (one per usable CPU)',
           convert=parse_workers),
    Option("metrics", str, "", 'serve /metrics at [HOST:]PORT (HOST defaults to 127.0.0.1); '
           '"" off', convert=check_metrics_address),
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
    workers: int | str = 1  # or "auto": see worker_count()
    metrics: str = ""
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
        reason = api_workers_problem(values["workers"], values["toxiproxy_api"])
        if reason:
            problems.add("[daemon]", reason, "workers", values["workers"])
    for key in ("user", "group"):
        reason = account_problem(values[key])
        if reason:
            problems.add("[daemon]", reason, key, values[key])
    return DaemonConfig(**values)


def api_workers_problem(workers: int | str, toxiproxy_api: str) -> str | None:
    """Why ``workers`` cannot go with ``toxiproxy_api`` (proxies the API makes live in
    one process: each worker would bind the API's address and keep proxies of its own)."""
    if toxiproxy_api and workers != 1:
        return "toxiproxy_api needs workers = 1: proxies made through the API live in one process"
    return None


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
