"""Privileges: what this process may bind (the privileged-port sysctl, CAP_NET_BIND_SERVICE)
and dropping root for a configured user and group once everything is bound."""

from __future__ import annotations

import contextlib
import os
from functools import cache
from typing import NamedTuple

from portd.errors import PrivilegedPortError, PrivilegeError, UnknownUserError

UNPRIVILEGED_PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
CAP_NET_BIND_SERVICE = 10
_DEFAULT_UNPRIVILEGED_PORT_START = 1024


@cache
def unprivileged_port_start() -> int:
    """The lowest port anyone may bind (the sysctl; 1024 where it cannot be read)."""
    try:
        with open(UNPRIVILEGED_PORT_START, encoding="ascii") as file:  # noqa: PTH123 - pathlib costs start-up time
            return int(file.read())
    except (OSError, ValueError):
        return _DEFAULT_UNPRIVILEGED_PORT_START


@cache
def has_capability(bit: int) -> bool:
    """True when the effective capability set of this process holds ``bit``."""
    try:
        with open("/proc/self/status", encoding="utf-8") as file:  # noqa: PTH123
            status = file.read()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def check_port_allowed(port: int, label: str) -> None:
    """Fail early, with the remedies, when ``port`` needs a privilege this process lacks.

    Raises:
        PrivilegedPortError: port is below the sysctl and CAP_NET_BIND_SERVICE is missing.
    """
    start = unprivileged_port_start()
    if port == 0 or port >= start or has_capability(CAP_NET_BIND_SERVICE):
        return
    raise PrivilegedPortError(
        f"{label}: port {port} is privileged (net.ipv4.ip_unprivileged_port_start = {start}) "
        "and this process lacks CAP_NET_BIND_SERVICE; use socket activation (portd.socket), "
        f"AmbientCapabilities=CAP_NET_BIND_SERVICE, or a port >= {start}"
    )


class Identity(NamedTuple):
    """Whom portd runs as after binding."""

    uid: int
    gid: int
    label: str


def resolve_identity(user: str, group: str = "") -> Identity:
    """``user``/``group`` as names or numbers; a uid need not exist in passwd (DynamicUser).

    Without ``group``: the user's primary group, or the gid equal to a bare uid.

    Raises:
        PortdError: an unknown user or group name (exit 67, EX_NOUSER).
    """
    import grp
    import pwd

    entry = None
    if user.isdigit():
        uid = int(user)
        with contextlib.suppress(KeyError):
            entry = pwd.getpwuid(uid)
    else:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise UnknownUserError(
                f"unknown user {user!r} (use a name from passwd or a uid)"
            ) from None
        uid = entry.pw_uid
    if group.isdigit():
        gid = int(group)
    elif group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise UnknownUserError(f"unknown group {group!r} (use a name or a gid)") from None
    else:
        gid = entry.pw_gid if entry is not None else uid
    return Identity(uid, gid, f"{user}:{group or gid}")


def drop_privileges(identity: Identity) -> None:
    """Switch every uid and gid to ``identity`` and clear supplementary groups, for good.

    Raises:
        PrivilegeError: not root (and not already that user), or root could be regained.
    """
    if os.geteuid() != 0:
        if (os.geteuid(), os.getegid()) == (identity.uid, identity.gid):
            return
        raise PrivilegeError(
            f"switching to {identity.label} needs root; started as uid {os.geteuid()}"
        )
    os.setgroups([])
    os.setresgid(identity.gid, identity.gid, identity.gid)
    os.setresuid(identity.uid, identity.uid, identity.uid)
    has_capability.cache_clear()
    if identity.uid != 0 and _can_regain_root():
        raise PrivilegeError(
            f"dropped to {identity.label} but root can be regained; refusing to serve"
        )


def _can_regain_root() -> bool:
    try:
        os.setuid(0)
    except PermissionError:
        return False
    return True
