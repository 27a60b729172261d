"""portd: listen on ports. A daemon, a netcat for the shell, and real ports for tests.

Public API only; everything else is importable from its module but not promised.
"""

from __future__ import annotations

from portd.binds import BindSpec, parse_bind
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
from portd.options import Option

__version__ = "0.1.0.dev0"

__all__ = [
    "AddressInUseError",
    "AddressNotAvailableError",
    "BindError",
    "BindSpec",
    "BindSyntaxError",
    "ConfigError",
    "Connection",
    "DatagramEndpoint",
    "Handler",
    "HandlerError",
    "Option",
    "PortdError",
    "PrivilegedPortError",
    "StreamSession",
    "UsageError",
    "__version__",
    "parse_bind",
]
