"""structlog configuration, called once by the CLI: console on a terminal, JSON lines otherwise.

Logs always go to stderr; stdout belongs to data (``portd listen``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(
    log_format: str = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Set up structlog for the whole process.

    Args:
        log_format: ``auto`` (console on a TTY, JSON otherwise), ``console`` or ``json``.
        level: lowest level written; calls below it cost one method lookup.
        stream: where lines go; stderr by default.
    """
    stream = stream or sys.stderr
    console = log_format == "console" or (log_format == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if not console:
        processors.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    # asyncio and libraries log through the standard library: route them to the same place.
    logging.basicConfig(level=LEVELS[level], stream=stream, format="%(name)s: %(message)s")


def get_logger(**context: Any) -> Any:
    """A structlog logger bound to ``context`` (listener, ...)."""
    return structlog.get_logger().bind(**context)
