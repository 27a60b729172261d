"""The listener keys that shape sockets, which endpoint kinds they apply to, and how
they become SocketOptions.

Config loading imports this (it needs portd.options); the endpoint kinds themselves do
not, so ``portd listen`` parses endpoints without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from portd.endpoints.base import SocketOptions
from portd.errors import OptionError
from portd.options import Option

MODE_RULE = 'expected a file mode such as "0660" (a string of octal digits) or 0o660'


def parse_mode(value: Any) -> int:
    """``"0660"``, ``"660"`` or the integer ``0o660`` -> 0o660 (at most 0o777).

    Raises:
        OptionError: anything else.
    """
    if isinstance(value, str) and value and all(c in "01234567" for c in value):
        mode = int(value, 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise OptionError(MODE_RULE)
    if not 0 <= mode <= 0o777:
        raise OptionError(MODE_RULE)
    return mode


SOCKET_KEYS = (
    Option("backlog", int, 1024, "pending-connection queue length (stream sockets)",
           minimum=1, maximum=65535),
    Option("socket_mode", object, None, 'unix socket file mode, e.g. "0660" (default: 0666 '
           "minus the umask)", convert=parse_mode),
    Option("socket_user", str, "", "unix socket file owner: a name or uid (needs root)"),
    Option("socket_group", str, "", "unix socket file group: a name or gid"),
    Option("reuse_port", bool, False, "SO_REUSEPORT: with [daemon] workers, a socket of its "
           "own per worker, balanced by the kernel"),
)  # fmt: skip
KIND_ONLY_KEYS = {
    "socket_mode": "unix", "socket_user": "unix", "socket_group": "unix", "reuse_port": "inet",
}  # fmt: skip
STREAM_ONLY_KEYS = frozenset({"backlog"})


def socket_options(values: Mapping[str, Any], *, listens: bool) -> SocketOptions:
    """The SocketOptions of a listener from its checked keys.

    Raises:
        OptionError: ``socket_user``/``socket_group`` names nobody (the message names
            the key).
    """
    user, group = values["socket_user"], values["socket_group"]
    owner = (_user_id(user), _group_id(group)) if user or group else None
    return SocketOptions(
        values["backlog"], listens, values["socket_mode"], owner, values["reuse_port"]
    )


MAX_ID = 2**32 - 2  # (uid_t)-1 means "leave unchanged" to chown(): never an owner


def _numeric_id(name: str, key: str) -> int | None:
    if not (name.isascii() and name.isdigit()):
        return None
    if len(name) > 10 or int(name) > MAX_ID:
        raise OptionError(f"{key}: {name} is not a valid id (0-{MAX_ID})")
    return int(name)


def _user_id(name: str) -> int:
    if not name:
        return -1
    number = _numeric_id(name, "socket_user")
    if number is not None:
        return number
    import pwd

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise OptionError(f"socket_user: unknown user {name!r}") from None


def _group_id(name: str) -> int:
    if not name:
        return -1
    number = _numeric_id(name, "socket_group")
    if number is not None:
        return number
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise OptionError(f"socket_group: unknown group {name!r}") from None
