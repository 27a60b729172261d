"""Logging set-up: JSON lines off a terminal, console lines on one, levels filter."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from portd.logging import configure_logging, get_logger


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    structlog.reset_defaults()
    for handler in [h for h in root.handlers if getattr(h, "portd", False)]:
        root.removeHandler(handler)
    root.setLevel(level)


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


def test_standard_library_records_are_json_lines_too() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream)
    logging.getLogger("some.library").warning("disk %s is slow", "sda")
    get_logger().info("daemon_ready")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["event"], r["level"]) for r in records] == [
        ("disk sda is slow", "warning"),
        ("daemon_ready", "info"),
    ]
    assert records[0]["logger"] == "some.library"
    assert records[0]["timestamp"].endswith("Z")


def test_tracebacks_are_structured_in_json() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("lib").exception("failed")
        get_logger().exception("handler_failed")
    for line in stream.getvalue().splitlines():
        record = json.loads(line)
        (frame_group,) = record["exception"]
        assert (frame_group["exc_type"], frame_group["exc_value"]) == ("ValueError", "boom")
        assert frame_group["frames"][-1]["name"] == "test_tracebacks_are_structured_in_json"


def test_critical_is_a_level() -> None:
    stream = io.StringIO()
    configure_logging("json", "critical", stream)
    get_logger().error("reload_failed")
    get_logger().critical("cannot_go_on")
    logging.getLogger("lib").error("not shown")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == [
        "cannot_go_on"
    ]


def test_lines_carry_their_syslog_priority_when_stderr_is_the_journal(tmp_path: Path) -> None:
    """JOURNAL_STREAM names the stream's device and inode: journald reads "<N>"."""
    with (tmp_path / "journal").open("w") as stream:
        info = os.fstat(stream.fileno())
        environ = {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        configure_logging("json", "debug", stream, environ)
        log = get_logger()
        log.debug("a")
        log.info("b")
        log.warning("c")
        log.error("d")
        logging.getLogger("lib").warning("e")
    lines = (tmp_path / "journal").read_text().splitlines()
    assert [(line[:3], json.loads(line[3:])["event"]) for line in lines] == [
        ("<7>", "a"), ("<6>", "b"), ("<4>", "c"), ("<3>", "d"), ("<4>", "e"),
    ]  # fmt: skip


def test_no_priority_prefix_when_journal_stream_names_another_file(tmp_path: Path) -> None:
    """A child of a service whose stderr was redirected inherits JOURNAL_STREAM."""
    with (tmp_path / "other").open("w") as stream:
        configure_logging("json", "info", stream, {"JOURNAL_STREAM": "1:2"})
        get_logger().info("daemon_ready")
    (line,) = (tmp_path / "other").read_text().splitlines()
    assert json.loads(line)["event"] == "daemon_ready"


@pytest.mark.parametrize(
    ("stream_kind", "environ", "colored"),
    [
        ("terminal", {}, True),
        ("terminal", {"NO_COLOR": "1"}, False),
        ("terminal", {"NO_COLOR": "", "FORCE_COLOR": ""}, True),
        ("pipe", {}, False),
        ("pipe", {"FORCE_COLOR": "1"}, True),
        ("pipe", {"FORCE_COLOR": "1", "NO_COLOR": "1"}, False),
    ],
)
def test_console_colours_follow_no_color_and_force_color(
    stream_kind: str, environ: dict[str, str], colored: bool
) -> None:
    stream = Terminal() if stream_kind == "terminal" else io.StringIO()
    configure_logging("console", "info", stream, environ)
    get_logger().warning("accept_failed", listener="echo")
    text = stream.getvalue()
    assert "accept_failed" in text
    assert ("\x1b[" in text) is colored
