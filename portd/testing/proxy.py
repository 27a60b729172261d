"""``forward()``: a forwarding proxy with live toxics between a test and its dependency.

    with forward(("127.0.0.1", 5432)) as proxy:       # or "HOST:PORT", or a portd server
        connect_to(proxy.address)
        with proxy.toxic("latency", latency=100):      # every reply 100 ms late
            ...
        with proxy.down():                              # connections are reset
            ...

The proxy is a portd ``forward`` listener run by :func:`portd.testing.serve` (a
background thread in a ``with`` block, the caller's loop in an ``async with`` block).
Toxic changes run on the proxy's own loop and take effect on live connections at
once; the call returns once they have.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from portd.endpoints.base import ProtocolName
from portd.testing.server import ServeContext, Server, serve
from portd.toxics.spec import Toxic, build_toxic

if TYPE_CHECKING:
    from portd.handlers.forward import ForwardHandler
    from portd.testing.records import ConnectionRecord

TARGETING = ("only_new", "nth", "peer")


def upstream_text(upstream: Any) -> str:
    """``HOST:PORT`` (or ``unix:PATH``) from a string, a ``(host, port)`` tuple or a
    portd test Server.

    Raises:
        TypeError: anything else.
    """
    if isinstance(upstream, str):
        return upstream
    if isinstance(upstream, Server):
        return f"unix:{upstream.path}" if upstream.is_unix else _host_port(*upstream.address)
    if isinstance(upstream, tuple) and len(upstream) >= 2:
        return _host_port(str(upstream[0]), int(upstream[1]))
    raise TypeError(f"upstream {upstream!r}: expected 'HOST:PORT', (host, port) or a Server")


def upstream_options(upstream: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The forward's options for ``upstream``: its text, and for a portd TLS test
    server, TLS to it verified by the test CA (``options`` override both)."""
    found: dict[str, Any] = {"upstream": upstream_text(upstream)}
    if isinstance(upstream, Server) and upstream.tls is not None:
        found |= {"upstream_tls": True, "upstream_ca": upstream.ca_path}
    return found | options


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def forward(
    upstream: Any,
    bind: str = "127.0.0.1:0",
    protocol: ProtocolName = "tcp",
    **options: Any,
) -> ForwardContext:
    """A proxy to ``upstream`` for ``with`` or ``async with``.

    Args:
        upstream: ``"HOST:PORT"``, ``"unix:/path"``, a ``(host, port)`` tuple, or a
            portd test Server (one serving TLS is reached over TLS, trusting the test CA).
        bind: where the proxy listens (port 0: the kernel's choice).
        protocol: tcp, or udp for a datagram forward.
        **options: the forward handler's options (``connect_timeout_s``,
            ``proxy_protocol``, ``upstream_tls``, ``toxic=[{...}]``) and serve()'s
            (``check_leaks``, ``tls=True`` to terminate TLS on the proxy, ...).

    Raises (on entering the block):
        ConfigError: a bad option or upstream.
    """
    return ForwardContext(serve("forward", bind, protocol, **upstream_options(upstream, options)))


class ForwardContext:
    """What ``forward()`` returns: enter it once, sync or async."""

    def __init__(self, context: ServeContext) -> None:
        self.context = context

    def __enter__(self) -> Proxy:
        return Proxy(self.context.__enter__())

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.context.__exit__(kind, exc, tb)

    async def __aenter__(self) -> Proxy:
        return Proxy(await self.context.__aenter__())

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.context.__aexit__(kind, exc, tb)


class Proxy:
    """A running forward: where to connect, its toxics, and what it relayed."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.protocol = server.protocol
        handler = server.running.listener.handler if server.running.listener else None
        self._handler: ForwardHandler = handler  # type: ignore[assignment]

    @property
    def address(self) -> Any:
        """What clients connect to: ``(host, port)``, or a unix socket's path."""
        return self.server.address

    @property
    def host(self) -> str:
        """The proxy's host."""
        return self.server.host

    @property
    def port(self) -> int:
        """The proxy's port."""
        return self.server.port

    @property
    def url(self) -> str:
        """``http://host:port`` of the proxy (``https://`` when it serves TLS)."""
        return self.server.url

    def ssl_context(self) -> Any:
        """A client SSLContext trusting the test CA, for a proxy that terminates TLS
        (``forward(..., tls=True)``)."""
        return self.server.ssl_context()

    @property
    def ca_path(self) -> str:
        """The test CA's PEM file (curl ``--cacert``) for a proxy that terminates TLS."""
        return self.server.ca_path

    @property
    def upstream(self) -> str:
        """Where it forwards to."""
        return str(self._handler.settings["upstream"])

    @property
    def connections(self) -> tuple[ConnectionRecord, ...]:
        """Closed connections: bytes each way, how each ended (also ``upstream_ended``)."""
        return self.server.connections

    def wait_connections(self, count: int = 1, *, timeout_s: float = 10.0) -> Any:
        """Block until ``count`` connections have closed; all closed so far."""
        return self.server.wait_connections(count, timeout_s=timeout_s)

    async def wait_connections_async(self, count: int = 1, *, timeout_s: float = 10.0) -> Any:
        """:meth:`wait_connections` for async tests."""
        return await self.server.wait_connections_async(count, timeout_s=timeout_s)

    @property
    def toxics(self) -> list[Toxic]:
        """The toxics in force, in chain order."""
        result: list[Toxic] = self.server.call_in_loop(lambda: self._handler.table.toxics)
        return result

    def add_toxic(
        self,
        type: str,
        *,
        name: str = "",
        stream: str = "downstream",
        toxicity: float = 1.0,
        **attributes: Any,
    ) -> Toxic:
        """Add a toxic (toxiproxy's attribute names: ``latency=100``, ``rate=50``;
        targeting: ``only_new=True``, ``nth=3``, ``peer="127.0.0.2"``); live
        connections get it before this returns.

        Raises:
            OptionError: a bad type, attribute or value.
            ToxicExistsError: the name is taken.
        """
        targeting = {key: attributes.pop(key) for key in TARGETING if key in attributes}
        common = {"name": name, "stream": stream, "toxicity": toxicity}
        toxic = build_toxic(type, common, attributes, targeting, self.protocol)
        added: Toxic = self.server.call_in_loop(lambda: self._handler.table.add(toxic))
        return added

    def update_toxic(self, name: str, *, toxicity: float | None = None, **attributes: Any) -> Toxic:
        """Change some attributes of a toxic (as toxiproxy's PATCH).

        Raises:
            ToxicNotFoundError: no toxic has that name. OptionError: a bad value.
        """

        def update() -> Toxic:
            old = self._handler.table.get(name)
            merged = {**old.attributes, **attributes}
            targeting = {key: merged.pop(key, getattr(old, key)) for key in TARGETING}
            common = {"name": name, "stream": old.stream,
                      "toxicity": old.toxicity if toxicity is None else toxicity}  # fmt: skip
            return self._handler.table.update(
                build_toxic(old.type, common, merged, targeting, self.protocol)
            )

        result: Toxic = self.server.call_in_loop(update)
        return result

    def remove_toxic(self, name: str) -> None:
        """Take a toxic out; bytes it held go on, in order.

        Raises:
            ToxicNotFoundError: no toxic has that name.
        """
        self.server.call_in_loop(lambda: self._handler.table.remove(name))

    @contextlib.contextmanager
    def toxic(self, type: str, **options: Any) -> Iterator[Toxic]:
        """:meth:`add_toxic` for the block, removed on leaving it."""
        added = self.add_toxic(type, **options)
        try:
            yield added
        finally:
            self.remove_toxic(added.name)

    @contextlib.asynccontextmanager
    async def toxic_async(self, type: str, **options: Any) -> AsyncIterator[Toxic]:
        """:meth:`toxic` for ``async with`` (either mode)."""
        with self.toxic(type, **options) as added:
            yield added

    def reset(self) -> None:
        """Remove every toxic and bring the proxy up (toxiproxy's ``POST /reset``)."""
        self.server.call_in_loop(self._reset)

    def _reset(self) -> None:
        self._handler.table.clear()
        self._handler.set_enabled(True)

    def disable(self) -> None:
        """Down: live connections are reset, new ones reset at once."""
        self.server.call_in_loop(lambda: self._handler.set_enabled(False))

    def enable(self) -> None:
        """Up again."""
        self.server.call_in_loop(lambda: self._handler.set_enabled(True))

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The proxy is down for the block (toxiproxy's ``enabled = false``)."""
        self.disable()
        try:
            yield
        finally:
            self.enable()

    def __repr__(self) -> str:
        return f"<portd forward {self.server.addresses[0]} -> {self.upstream}>"
