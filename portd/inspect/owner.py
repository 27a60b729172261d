"""Who holds a port: the process behind an address already in use.

psutil is imported only here and only when asked, so commands that never inspect pay
nothing for it at start-up.
"""

from __future__ import annotations

from portd.endpoints.base import ProtocolName
from portd.endpoints.inet import InetAddress


def find_port_owner(protocol: ProtocolName, address: InetAddress) -> str | None:
    """Describe the process holding ``address`` for ``protocol``, when visible.

    Returns:
        ``"pid 123 (nginx)"``, ``"another user's process (run as root to see which)"``,
        or None when no holder is visible at all.
    """
    import psutil

    try:
        sockets = psutil.net_connections(kind=protocol)
    except (psutil.Error, OSError):
        return None
    for entry in sockets:
        local = entry.laddr
        if not local or local.port != address.port or entry.family != address.family:
            continue
        if protocol == "tcp" and entry.status != psutil.CONN_LISTEN:
            continue
        if not _overlaps(local.ip, address.host):
            continue
        return _describe(entry.pid)
    return None


def _overlaps(held: str, wanted: str) -> bool:
    return held == wanted or held in ("0.0.0.0", "::") or wanted in ("0.0.0.0", "::")


def _describe(pid: int | None) -> str:
    import psutil

    if pid is None:
        return "another user's process (run as root to see which)"
    try:
        return f"pid {pid} ({psutil.Process(pid).name()})"
    except psutil.Error:
        return f"pid {pid}"
