"""The test server's logger: quiet, and never touching the host's logging set-up.

The daemon configures structlog globally (portd.logging); a test server must not, since
the test suite around it may have its own structlog configuration. Each test server
instead gets a private structlog logger that renders one line per event and hands it to
the standard library logger ``portd.testing``. So:

* by default only warnings and errors (``handler_failed``, ``accept_failed``) appear,
  as the standard library's root logger is at WARNING;
* under pytest they land in the "Captured log" section and in ``caplog``, and
  ``--log-level=INFO`` (or ``logging.getLogger("portd.testing").setLevel(...)``, or
  ``serve(log_level="info")``) shows ``listener_started`` and ``connection_closed`` too;
* structlog's global configuration is never read or changed.

The level is read once, when the server starts: events below it cost one no-op call.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

LOGGER_NAME = "portd.testing"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def make_logger(level: str | None = None) -> Any:
    """A structlog logger writing to the ``portd.testing`` standard library logger.

    Args:
        level: debug, info, warning or error; None: that logger's effective level now.

    Raises:
        ValueError: an unknown level name.
    """
    import structlog

    target = logging.getLogger(LOGGER_NAME)
    if level is None:
        threshold = target.getEffectiveLevel()
    elif level in LEVELS:
        threshold = LEVELS[level]
    else:
        raise ValueError(f"log_level {level!r}: expected one of {', '.join(LEVELS)}")
    return structlog.wrap_logger(
        target,
        processors=[structlog.processors.format_exc_info, render_line],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        context_class=dict,
        cache_logger_on_first_use=True,
    )


def render_line(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> str:
    """``event key=value ...``, with a traceback (if any) on the lines below."""
    event = event_dict.pop("event", "")
    exception = event_dict.pop("exception", None)
    fields = " ".join(f"{key}={value!r}" for key, value in event_dict.items())
    line = f"{event} {fields}" if fields else str(event)
    return f"{line}\n{exception}" if exception else line
