"""portd: listen on ports. A daemon, a netcat for the shell, and real ports for tests.

Public API only. Names are imported on first use (PEP 562), so ``portd listen`` and
test fixtures pay at start-up only for the modules they touch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "AddressInUseError": "portd.errors",
    "AddressNotAvailableError": "portd.errors",
    "BindError": "portd.errors",
    "Endpoint": "portd.endpoints.base",
    "BindSyntaxError": "portd.errors",
    "ConfigError": "portd.errors",
    "Connection": "portd.handlers.base",
    "DatagramEndpoint": "portd.handlers.base",
    "Handler": "portd.handlers.base",
    "HandlerError": "portd.errors",
    "Option": "portd.options",
    "PortdError": "portd.errors",
    "PrivilegedPortError": "portd.errors",
    "StreamSession": "portd.handlers.base",
    "Stream": "portd.handlers.streams",
    "StreamHandler": "portd.handlers.streams",
    "UsageError": "portd.errors",
    "Peer": "portd.endpoints.base",
    "parse_endpoint": "portd.endpoints.parse",
}

__all__ = [
    "AddressInUseError",
    "AddressNotAvailableError",
    "BindError",
    "BindSyntaxError",
    "ConfigError",
    "Connection",
    "DatagramEndpoint",
    "Endpoint",
    "Handler",
    "HandlerError",
    "Option",
    "PortdError",
    "PrivilegedPortError",
    "Stream",
    "StreamHandler",
    "StreamSession",
    "UsageError",
    "__version__",
    "Peer",
    "parse_endpoint",
]

if TYPE_CHECKING:
    from portd.endpoints.base import Endpoint, Peer
    from portd.endpoints.parse import parse_endpoint
    from portd.errors import (
        AddressInUseError,
        AddressNotAvailableError,
        BindError,
        BindSyntaxError,
        ConfigError,
        HandlerError,
        PortdError,
        PrivilegedPortError,
        UsageError,
    )
    from portd.handlers.base import Connection, DatagramEndpoint, Handler, StreamSession
    from portd.handlers.streams import Stream, StreamHandler
    from portd.options import Option


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'portd' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
