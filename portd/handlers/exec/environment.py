"""The environment a program starts with: small by default, never portd's own unless
asked, with the connection named the way ucspi-tcp names it so existing scripts work.

    PATH=/usr/local/bin:/usr/bin:/bin         (unless env sets PATH)
    USER, LOGNAME, HOME, SHELL                (with user =, from passwd, as systemd sets them)
    PROTO=TCP TCPREMOTEIP TCPREMOTEPORT TCPLOCALIP TCPLOCALPORT   (UDP: PROTO=UDP, UDP...)
    PROTO=UNIX UNIXREMOTEPID UNIXREMOTEUID UNIXREMOTEGID ...      (unix sockets)
    PORTD_LISTENER PORTD_CONN_ID
    then every variable of ``env``            (they win over all of the above)

With ``inherit_env = true`` portd's whole environment comes first instead of PATH.
The peer says which variables name it (its kind knows); this module never asks which
kind of endpoint a connection came through.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from portd.endpoints.base import Peer
from portd.handlers.exec.settings import DEFAULT_PATH, Identity
from portd.options import Settings


def base_environment(settings: Settings, identity: Identity) -> dict[str, str]:
    """What every connection of the listener shares (built once, at load)."""
    env = dict(os.environ) if settings["inherit_env"] else {"PATH": DEFAULT_PATH}
    if identity.name:
        env.update(USER=identity.name, LOGNAME=identity.name, HOME=identity.home,
                   SHELL=identity.shell or "/bin/sh")  # fmt: skip
    return env


def connection_environment(
    base: Mapping[str, str],
    extra: Mapping[str, str],
    *,
    peer: Peer,
    protocol: str,
    local: Any,
    listener: str,
    conn_id: int | None,
) -> dict[str, str]:
    """The environment of the program serving one connection (or, for UDP, the
    datagram from ``peer`` that started it)."""
    env = dict(base)
    env.update(peer.environment(protocol, local))
    env["PORTD_LISTENER"] = listener
    if conn_id is not None:
        env["PORTD_CONN_ID"] = str(conn_id)
    env.update(extra)
    return env
