"""Logging set-up: JSON lines off a terminal, console lines on one, levels filter."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from portd.logging import configure_logging, get_logger


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_auto_writes_one_json_object_per_line_when_not_a_terminal() -> None:
    stream = io.StringIO()
    configure_logging("auto", "info", stream)
    get_logger(listener="echo").info("listener_started", port=7)
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert event["event"] == "listener_started"
    assert event["listener"] == "echo"
    assert event["port"] == 7
    assert event["level"] == "info"
    assert event["timestamp"].endswith("Z")


def test_auto_writes_console_lines_on_a_terminal() -> None:
    stream = Terminal()
    configure_logging("auto", "info", stream)
    get_logger().info("daemon_ready", listeners=2)
    line = stream.getvalue()
    assert "daemon_ready" in line
    assert "listeners" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_events_below_the_level_are_not_written() -> None:
    stream = io.StringIO()
    configure_logging("json", "warning", stream)
    log = get_logger()
    log.info("connection_closed")
    log.warning("accept_failed")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == [
        "accept_failed"
    ]
