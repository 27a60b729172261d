"""Where the toxiproxy API may listen: loopback (or a unix socket) unless asked otherwise.

Whoever reaches the API can open ports on this host and send their traffic anywhere,
so a non-loopback address needs ``[daemon] toxiproxy_api_remote = true`` (or
``portd toxiproxy --allow-remote``).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from portd.endpoints.parse import parse_endpoint
from portd.errors import BindSyntaxError, UsageError


def api_address_problem(text: str, allow_remote: bool) -> str | None:
    """Why ``text`` cannot be the API's address, or None."""
    try:
        endpoint = parse_endpoint(text, "tcp")
        addresses = endpoint.resolve()
    except BindSyntaxError as exc:
        return str(exc)
    if allow_remote:
        return None
    for address in addresses:
        sockaddr: Any = address.sockaddr
        if isinstance(sockaddr, tuple) and not _is_loopback(str(sockaddr[0])):
            return (
                f"{address} is not loopback: the API lets anyone who reaches it open ports "
                "and redirect traffic; allow it explicitly (toxiproxy_api_remote = true, "
                "--allow-remote)"
            )
    return None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def parse_api_address(text: str, *, allow_remote: bool) -> Any:
    """The API's endpoint.

    Raises:
        UsageError: the address does not parse, or is not loopback without allow_remote.
    """
    problem = api_address_problem(text, allow_remote)
    if problem:
        raise UsageError(f"toxiproxy API {text}: {problem}")
    return parse_endpoint(text, "tcp")
