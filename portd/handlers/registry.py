"""Finding handlers by name: built-ins first, then the ``portd.handlers`` entry points.

Built-ins are imported only when used and entry points are scanned only for names that
are not built in, so start-up pays for exactly the handlers a run needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from portd.errors import HandlerError
from portd.handlers.base import Handler

ENTRY_POINT_GROUP = "portd.handlers"
BUILTIN_HANDLERS = {
    "echo": "portd.handlers.echo:EchoHandler",
    "http-hello": "portd.handlers.http_hello:HttpHelloHandler",
    "file-receive": "portd.handlers.file_receive:FileReceiveHandler",
    "recorder": "portd.handlers.recorder:RecorderHandler",
    "blackhole": "portd.handlers.faults:BlackholeHandler",
    "stall": "portd.handlers.faults:StallHandler",
    "reset": "portd.handlers.faults:ResetHandler",
    "refuse": "portd.handlers.faults:RefuseHandler",
    "close-after": "portd.handlers.faults:CloseAfterHandler",
    "latency": "portd.handlers.shaping:LatencyHandler",
    "bandwidth": "portd.handlers.shaping:BandwidthHandler",
    "slicer": "portd.handlers.shaping:SlicerHandler",
    "forward": "portd.handlers.forward:ForwardHandler",
    "exec": "portd.handlers.exec.handler:ExecHandler",
    "discard": "portd.handlers.internal:DiscardHandler",
    "chargen": "portd.handlers.internal:ChargenHandler",
    "daytime": "portd.handlers.internal:DaytimeHandler",
    "time": "portd.handlers.internal:TimeHandler",
    "broker": "portd.handlers.broker:BrokerHandler",
    "chat": "portd.handlers.broker:ChatHandler",
}


def load_handler(name: str) -> type[Handler]:
    """The handler class called ``name``.

    Raises:
        HandlerError: no built-in or installed handler has that name, or the one that
            does is not a Handler subclass.
    """
    target = BUILTIN_HANDLERS.get(name)
    if target is not None:
        module_name, _, attribute = target.partition(":")
        loaded: object = _import(
            name, target, lambda: getattr(importlib.import_module(module_name), attribute)
        )
    else:
        from importlib.metadata import entry_points

        found = entry_points(group=ENTRY_POINT_GROUP, name=name)
        if not found:
            known = ", ".join(available_handlers())
            raise HandlerError(f"unknown handler {name!r}; installed handlers: {known}")
        point = next(iter(found))
        loaded = _import(name, point.value, point.load)
    if not (isinstance(loaded, type) and issubclass(loaded, Handler)):
        raise HandlerError(f"handler {name!r} ({loaded!r}) is not a portd Handler subclass")
    _check_option_names(name, loaded)
    return loaded


def _import(name: str, target: str, load: Callable[[], object]) -> object:
    """Run ``load``; any failure to import a handler's module is a HandlerError: after the
    privilege drop a module the new user cannot read fails with PermissionError, and a
    broken plugin with anything at all."""
    try:
        return load()
    except Exception as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise HandlerError(
            f"handler {name!r}: cannot import {target}: {type(exc).__name__}: {reason}"
        ) from exc


def _check_option_names(name: str, handler: type[Handler]) -> None:
    """Handler options share the listener's table: they must not shadow its keys."""
    from portd.config import LISTENER_OPTIONS

    taken = {option.name for option in LISTENER_OPTIONS}
    clashes = sorted(option.name for option in handler.options if option.name in taken)
    if clashes:
        raise HandlerError(
            f"handler {name!r} declares options named like listener keys: {', '.join(clashes)}"
        )


def available_handlers() -> list[str]:
    """Every handler name, built-in and installed, sorted."""
    from importlib.metadata import entry_points

    names = set(BUILTIN_HANDLERS)
    names.update(point.name for point in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)
