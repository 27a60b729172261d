"""Real ports for tests: in-process servers on kernel-chosen ports, with nothing to clean up.

Public API only; names are imported on first use (PEP 562), so the pytest plugin loads
without pulling in the server machinery until a fixture is used.

* :func:`serve`: a server for a ``with`` or ``async with`` block; yields a
  :class:`Server` with ``host``, ``port``, ``address``, ``url`` and records
  (:class:`ConnectionRecord`, :class:`DatagramRecord`).
* :func:`bound_socket` and :func:`listen_fds`: pass a bound socket to a child process
  the systemd way (LISTEN_FDS), so a server under test needs no port of its own.
* :func:`forward`: a forwarding proxy to a real dependency, with toxics added and
  removed while the test runs (:class:`Proxy`).
* :class:`LeakError`: what ``serve(check_leaks=True)`` and the fixtures raise.
* :class:`HandlerFailedError`: what leaving the block raises when the handler raised.
* :class:`ServerFactory`: the type of the ``portd_server`` fixture, for annotations.
* :class:`FakeConnection`, :class:`ManualClock`, :class:`RecordingEndpoint`,
  :class:`RecordingLog`: the kit for testing a handler's sessions without sockets.

The pytest plugin (``portd.testing.plugin``) is registered through the ``pytest11``
entry point.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ConnectionRecord": "portd.testing.records",
    "DatagramRecord": "portd.testing.records",
    "FakeConnection": "portd.testing.kit",
    "HandlerFailedError": "portd.testing.records",
    "ManualClock": "portd.testing.kit",
    "RecordingEndpoint": "portd.testing.kit",
    "RecordingLog": "portd.testing.kit",
    "LeakError": "portd.testing.leaks",
    "LeakReport": "portd.testing.leaks",
    "ListenFds": "portd.testing.fds",
    "Proxy": "portd.testing.proxy",
    "forward": "portd.testing.proxy",
    "ServeContext": "portd.testing.server",
    "Server": "portd.testing.server",
    "ServerFactory": "portd.testing.plugin",
    "bound_socket": "portd.testing.fds",
    "listen_fds": "portd.testing.fds",
    "serve": "portd.testing.server",
}

__all__ = [
    "ConnectionRecord",
    "DatagramRecord",
    "FakeConnection",
    "HandlerFailedError",
    "LeakError",
    "LeakReport",
    "ListenFds",
    "Proxy",
    "ManualClock",
    "RecordingEndpoint",
    "RecordingLog",
    "ServeContext",
    "Server",
    "ServerFactory",
    "bound_socket",
    "forward",
    "listen_fds",
    "serve",
]

if TYPE_CHECKING:
    from portd.testing.fds import ListenFds, bound_socket, listen_fds
    from portd.testing.kit import FakeConnection, ManualClock, RecordingEndpoint, RecordingLog
    from portd.testing.leaks import LeakError, LeakReport
    from portd.testing.plugin import ServerFactory
    from portd.testing.proxy import Proxy, forward
    from portd.testing.records import ConnectionRecord, DatagramRecord, HandlerFailedError
    from portd.testing.server import ServeContext, Server, serve


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'portd.testing' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
