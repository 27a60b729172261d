"""structlog configuration, called once by the CLI: console on a terminal, JSON lines otherwise.

Logs always go to stderr; stdout belongs to data (``portd listen``). Records of the
standard ``logging`` module (a handler's, a library's, asyncio's) are rendered by the
same processors through structlog's ProcessorFormatter, so in JSON mode every line is
JSON. Under systemd (``JOURNAL_STREAM`` names stderr) each line starts with its syslog
priority (``<3>`` error ... ``<7>`` debug), which journald strips and files the line
under. Console colours follow the terminal, ``NO_COLOR`` and ``FORCE_COLOR``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# journald reads "<N>" at a line's start as its priority (sd-daemon(3)) and strips it.
SYSLOG_PRIORITIES = {
    "critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "info": 6, "debug": 7,
}  # fmt: skip


def under_journald(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True when ``stream`` is the journal stream systemd named in ``JOURNAL_STREAM``
    (``DEV:INODE``); a redirected stderr of a child of a service is not."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is an OSError
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def use_colors(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """NO_COLOR (set, not empty) turns colours off, FORCE_COLOR on; else a terminal has them."""
    if environ.get("NO_COLOR"):
        return False
    if environ.get("FORCE_COLOR"):
        return True
    return stream.isatty()


class _Fields:
    """Adds the same fields to every event (a worker's slot), the event's own first."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self.fields = dict(fields)

    def __call__(self, logger: Any, name: str, event_dict: Any) -> Any:
        for key, value in self.fields.items():
            event_dict.setdefault(key, value)
        return event_dict


class _Prefixed:
    """A renderer whose lines start with the event's syslog priority, for journald."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event_dict: Any) -> str:
        priority = SYSLOG_PRIORITIES.get(str(event_dict.get("level", "info")), 6)
        return f"<{priority}>{self.renderer(logger, name, event_dict)}"


def configure_logging(
    log_format: str = "auto",
    level: str = "info",
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    fields: Mapping[str, Any] | None = None,
) -> None:
    """Set up structlog and the standard library's root logger for the whole process.

    Args:
        log_format: ``auto`` (console on a TTY, JSON otherwise), ``console`` or ``json``.
        level: lowest level written; calls below it cost one method lookup.
        stream: where lines go; stderr by default.
        environ: the environment to read JOURNAL_STREAM, NO_COLOR, FORCE_COLOR from.
        fields: added to every line (a worker's ``worker``: its slot).
    """
    stream = stream or sys.stderr
    env = os.environ if environ is None else environ
    console = log_format == "console" or (log_format == "auto" and stream.isatty())
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fields:
        shared.append(_Fields(fields))
    renderer: Any
    if console:
        renderer = structlog.dev.ConsoleRenderer(colors=use_colors(stream, env))
    else:
        shared.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer()
    if under_journald(stream, env):
        renderer = _Prefixed(renderer)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    _route_standard_logging(stream, shared, renderer, LEVELS[level])


def _route_standard_logging(stream: TextIO, shared: list[Any], renderer: Any, level: int) -> None:
    """asyncio and libraries log through the standard library: the same lines, same place."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.portd = True  # type: ignore[attr-defined]  # ours: replaced on the next call
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "portd", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def get_logger(**context: Any) -> Any:
    """A structlog logger bound to ``context`` (listener, ...)."""
    return structlog.get_logger().bind(**context)
