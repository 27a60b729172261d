"""The API's proxies: each a ``forward`` listener that the API opens, closes and faults.

A proxy keeps its handler (and so its toxics) for its whole life; disabling it closes
its listener (clients are refused, as with toxiproxy) and resets its connections,
enabling it binds the same address again (the port the kernel chose, if ``listen``
asked for port 0). Everything runs on the daemon's loop.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from portd.config import ListenerConfig, parse_config
from portd.errors import ConfigError, PortdError
from portd.handlers.forward import ForwardHandler
from portd.listeners import Listener
from portd.logging import get_logger

SOURCE = "toxiproxy API"


class ProxyError(Exception):
    """A request the API refuses: the status and toxiproxy's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def listener_name(name: str) -> str:
    """A listener name for a proxy name (API names are any text; listener names are not)."""
    return ("toxiproxy-" + re.sub(r"[^A-Za-z0-9._-]", "_", name))[:64]


def build_config(name: str, listen: str, upstream: str) -> ListenerConfig:
    """A forward listener's config for one proxy.

    Raises:
        ProxyError: 400 with the config's one-line reason.
    """
    table = {"name": listener_name(name), "bind": listen, "handler": "forward",
             "upstream": upstream}  # fmt: skip
    try:
        return parse_config({"listener": [table]}, SOURCE).listeners[0]
    except ConfigError as exc:
        reason = "; ".join(line.split(": ", 2)[-1] for line in exc.lines)
        raise ProxyError(400, f"bad request body: {reason}") from None


class ApiProxy:
    """One proxy: its name, addresses, handler and (while enabled) listener."""

    def __init__(self, name: str, config: ListenerConfig, next_conn_id: Callable[[], int]) -> None:
        self.name = name
        self.config = config
        self.listen_text = str(config.endpoint)
        self.handler = ForwardHandler(config.settings)
        self.listener: Listener | None = None
        self.next_conn_id = next_conn_id

    @property
    def enabled(self) -> bool:
        """True while it listens."""
        return self.listener is not None

    @property
    def upstream(self) -> str:
        """Where it forwards."""
        return str(self.handler.settings["upstream"])

    async def start(self) -> None:
        """Bind and serve (idempotent).

        Raises:
            ProxyError: 500 when the address cannot be bound.
        """
        if self.listener is not None:
            return
        config = self.config
        try:
            sockets = config.endpoint.open_sockets(
                config.addresses, config.socket_options, config.label
            )
        except PortdError as exc:
            raise ProxyError(500, f"listen {self.listen_text}: {exc}") from None
        log = get_logger(listener=config.name)
        listener = Listener(config, self.handler, sockets, self.next_conn_id, log=log)
        if config.endpoint.is_ephemeral:  # enabled again later: the same port
            bound = config.endpoint.describe_bound(listener.addresses)
            self.config = build_config(self.name, bound, self.upstream)
            self.listen_text = bound
        self.handler.set_enabled(True)
        await listener.start()
        self.listener = listener

    def stop(self) -> None:
        """Close the listener and reset every connection (idempotent)."""
        listener, self.listener = self.listener, None
        self.handler.set_enabled(False)
        if listener is not None:
            listener.stop_accepting()
            listener.abort_connections()
            listener.close()

    def as_json(self) -> dict[str, Any]:
        """toxiproxy's proxy shape, with its toxics."""
        return proxy_json(self)


def proxy_json(proxy: ApiProxy | ConfigProxy) -> dict[str, Any]:
    """toxiproxy's proxy shape: name, listen, upstream, enabled, toxics."""
    return {
        "name": proxy.name,
        "listen": proxy.listen_text,
        "upstream": proxy.upstream,
        "enabled": proxy.enabled,
        "toxics": [toxic.as_json() for toxic in proxy.handler.table.toxics],
    }


class ConfigProxy:
    """A config's forward listener seen through the API: its toxics and ``enabled`` can
    be changed (a reload that changes its toxic tables sets them again); its address
    belongs to the config, so it cannot be moved or deleted here."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.name = listener.config.name
        self.config = listener.config
        self.handler: ForwardHandler = listener.handler  # type: ignore[assignment]
        self.listen_text = listener.config.endpoint.describe_bound(listener.addresses)

    @property
    def enabled(self) -> bool:
        """Whether it forwards (down: connections are reset)."""
        return self.handler.enabled

    @property
    def upstream(self) -> str:
        """Where it forwards."""
        return str(self.handler.settings["upstream"])

    async def start(self) -> None:
        """Up."""
        self.handler.set_enabled(True)

    def stop(self) -> None:
        """Down: live connections are reset, new ones too."""
        self.handler.set_enabled(False)

    def as_json(self) -> dict[str, Any]:
        """toxiproxy's proxy shape, with its toxics."""
        return proxy_json(self)


Proxies = Callable[[], list[Listener]]


class Registry:
    """Every proxy the API made, by name, and the config's forward listeners."""

    def __init__(self, next_conn_id: Callable[[], int], configured: Proxies = list) -> None:
        self.proxies: dict[str, ApiProxy] = {}
        self.next_conn_id = next_conn_id
        self.configured = configured  # the supervisor's listeners, as they are now

    def all(self) -> dict[str, ApiProxy | ConfigProxy]:
        """The API's proxies and the config's forwards, by name."""
        found: dict[str, ApiProxy | ConfigProxy] = {
            listener.config.name: ConfigProxy(listener)
            for listener in self.configured()
            if isinstance(listener.handler, ForwardHandler)
        }
        found.update(self.proxies)
        return found

    def get(self, name: str) -> Any:
        """An ApiProxy or a ConfigProxy. Raises ProxyError 404."""
        proxy = self.all().get(name)
        if proxy is None:
            raise ProxyError(404, "proxy not found")
        return proxy

    @staticmethod
    def own(proxy: Any) -> ApiProxy:
        """The API's own proxy. Raises ProxyError 409 for a config's."""
        if not isinstance(proxy, ApiProxy):
            raise ProxyError(409, f"proxy {proxy.name} is defined in the config: edit it there")
        return proxy

    async def create(self, name: str, listen: str, upstream: str, enabled: bool) -> ApiProxy:
        """A new proxy, listening unless ``enabled`` is False.

        Raises:
            ProxyError: 409 when the name is taken, 400 for bad fields, 500 for a bind.
        """
        if name in self.all():
            raise ProxyError(409, "proxy already exists")
        proxy = ApiProxy(name, build_config(name, listen, upstream), self.next_conn_id)
        if enabled:
            await proxy.start()
        self.proxies[name] = proxy
        return proxy

    async def update(self, proxy: Any, listen: str, upstream: str, enabled: bool) -> None:
        """Change a proxy's addresses or state (a new address rebinds; toxics stay)."""
        if listen != proxy.listen_text or upstream != proxy.upstream:
            proxy = self.own(proxy)
            config = build_config(proxy.name, listen, upstream)
            proxy.stop()
            toxics = proxy.handler.table.toxics
            proxy.config = replace(config)
            proxy.listen_text = str(config.endpoint)
            proxy.handler = ForwardHandler(config.settings)
            proxy.handler.set_toxics(toxics)
        if enabled:
            await proxy.start()
        else:
            proxy.stop()

    def remove(self, name: str) -> None:
        """Stop and forget a proxy. Raises ProxyError 404, or 409 for a config's."""
        self.own(self.get(name)).stop()
        del self.proxies[name]

    def close(self) -> None:
        """Stop every proxy (the daemon is stopping)."""
        for proxy in self.proxies.values():
            proxy.stop()
