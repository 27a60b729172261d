"""Handlers: the registry and one module per built-in handler."""

from __future__ import annotations

from portd.handlers.base import Connection, DatagramEndpoint, Handler, Peer, StreamSession
from portd.handlers.registry import available_handlers, load_handler

__all__ = [
    "Connection",
    "DatagramEndpoint",
    "Handler",
    "Peer",
    "StreamSession",
    "available_handlers",
    "load_handler",
]
