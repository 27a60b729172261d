"""toxiproxy's HTTP API, so toxiproxy's clients drive portd's forwards unchanged.

* ``address``: where the API may listen (loopback unless allowed explicitly);
* ``http``: the HTTP/1.1 server (llhttp through httptools, as http-hello);
* ``api``: toxiproxy's endpoints, JSON shapes and status codes;
* ``registry``: the proxies the API made, each a ``forward`` listener.

:func:`start_api` runs it inside a daemon (``[daemon] toxiproxy_api``, ``portd
toxiproxy``); the API's own connections are served by an ordinary listener.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

from portd.endpoints.base import ProtocolName
from portd.handlers.base import Connection, Handler, StreamSession
from portd.listeners import Listener
from portd.logging import get_logger
from portd.toxiproxy.address import parse_api_address
from portd.toxiproxy.api import Api
from portd.toxiproxy.http import ApiSession
from portd.toxiproxy.registry import Registry

__all__ = ["ToxiproxyApi", "start_api"]


class ApiHandler(Handler):
    """Serves the API on its listener's connections."""

    name = "toxiproxy-api"
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp"})
    default_limits: ClassVar[dict[str, Any]] = {"idle_timeout_s": 60.0}

    def __init__(self, api: Api) -> None:
        super().__init__({})
        self.api = api

    def open_session(self, conn: Connection) -> StreamSession:
        return ApiSession(conn, self.api.handle)


class ToxiproxyApi:
    """The API's listener and its proxies."""

    def __init__(self, listener: Listener, registry: Registry) -> None:
        self.listener = listener
        self.registry = registry

    @property
    def address(self) -> str:
        """Where the API listens, as bound."""
        return self.listener.config.endpoint.describe_bound(self.listener.addresses)

    def stop_accepting(self) -> None:
        """Stop the API and every proxy's accepting (the daemon drains)."""
        self.listener.stop_accepting()
        for proxy in self.registry.proxies.values():
            if proxy.listener is not None:
                proxy.listener.stop_accepting()

    def close(self) -> None:
        """Close the API and every proxy (their connections are reset)."""
        self.registry.close()
        self.listener.abort_connections()
        self.listener.close()


async def start_api(
    where: str,
    *,
    allow_remote: bool,
    next_conn_id: Callable[[], int],
    configured: Callable[[], list[Listener]] = list,
) -> ToxiproxyApi:
    """Bind and serve the API at ``where``; ``configured`` gives the config's listeners
    (their forwards are proxies of the API too).

    Raises:
        UsageError: a bad or non-loopback address (without allow_remote).
        BindError: the address cannot be bound.
    """
    from portd.config import parse_config

    parse_api_address(where, allow_remote=allow_remote)
    table = {"name": "toxiproxy-api", "bind": where, "handler": "blackhole",
             "log_connections": False}  # fmt: skip
    config = parse_config({"listener": [table]}, "toxiproxy API").listeners[0]
    config = replace(config, handler=ApiHandler, limits=config.limits._replace(idle_timeout_s=60.0))
    registry = Registry(next_conn_id, configured)
    sockets = config.endpoint.open_sockets(config.addresses, config.socket_options, config.label)
    log = get_logger(listener=config.name)
    listener = Listener(config, ApiHandler(Api(registry)), sockets, next_conn_id, log=log)
    await listener.start()
    return ToxiproxyApi(listener, registry)
