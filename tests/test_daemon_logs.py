"""The daemon's stderr as jq and journald read it, from a real ``portd serve``: JSON on every
line even when a handler logs through the standard ``logging`` module (with a structured
traceback), syslog priorities under a simulated journal, and ``log_connections = false``.

The logging handler is a third-party plugin, installed the way pip would: a module and a
``.dist-info`` with its ``portd.handlers`` entry point, on the daemon's PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.support import PORTD, Daemon, run_portd, write_config

StartDaemon = Callable[..., Daemon]
PLUGIN = """
import logging

from portd import Handler, StreamSession

log = logging.getLogger("chatty.library")


class ChattySession(StreamSession):
    def __init__(self, conn):
        self.conn = conn

    def data_received(self, data):
        log.warning("got %d bytes", len(data))
        try:
            raise RuntimeError("a library's own failure")
        except RuntimeError:
            log.exception("recovered")
        self.conn.write(data)


class ChattyHandler(Handler):
    name = "chatty"
    protocols = frozenset({"tcp"})

    def open_session(self, conn):
        return ChattySession(conn)
"""


def install_plugin(site: Path) -> dict[str, str]:
    """The plugin as pip installs it; returns the environment that finds it."""
    site.mkdir()
    (site / "chatty_plugin.py").write_text(PLUGIN)
    info = site / "chatty_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: chatty-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[portd.handlers]\nchatty = chatty_plugin:ChattyHandler\n"
    )
    return {**os.environ, "PYTHONPATH": str(site)}


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := client.recv(1024):
            received += chunk
        return received


def test_every_stderr_line_is_json_with_a_handler_logging_through_logging(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    env = install_plugin(tmp_path / "site")
    daemon = start_daemon(
        '[[listener]]\nname = "c"\nbind = "127.0.0.1:0"\nhandler = "chatty"\n', env=env
    )
    port = daemon.ready()["c"]
    assert exchange(port, b"hello") == b"hello"
    daemon.wait_for("connection_closed")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert [e for e in daemon.events if e["event"] == "<not json>"] == []
    library = [e for e in daemon.events if e.get("logger") == "chatty.library"]
    assert [(e["event"], e["level"]) for e in library] == [
        ("got 5 bytes", "warning"),
        ("recovered", "error"),
    ]
    (failure,) = library[1]["exception"]
    assert (failure["exc_type"], failure["exc_value"]) == (
        "RuntimeError",
        "a library's own failure",
    )
    assert "Traceback" not in "\n".join(daemon.lines)  # structured, never a text block


def test_under_the_journal_each_line_starts_with_its_priority(tmp_path: Path) -> None:
    """JOURNAL_STREAM names stderr (here a file, as systemd names its stream socket)."""
    listener = '[[listener]]\nname = "e"\nbind = "127.0.0.1:0"\nhandler = "echo"\n'
    config = write_config(tmp_path, '[daemon]\nlog_level = "debug"\n' + listener)
    log = tmp_path / "journal"
    with log.open("w") as stderr:
        info = os.fstat(stderr.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        daemon = subprocess.Popen(
            [*PORTD, "serve", "-c", str(config), "--log-format", "json"],
            stdin=subprocess.DEVNULL, stderr=stderr, env=env,
        )  # fmt: skip
    try:
        wait_for_line(log, "daemon_ready")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(15)
    lines = log.read_text().splitlines()
    assert lines
    priorities = {"debug": "<7>", "info": "<6>", "warning": "<4>", "error": "<3>"}
    for line in lines:
        match = re.fullmatch(r"(<\d>)(\{.*\})", line)
        assert match is not None, line
        assert match.group(1) == priorities[json.loads(match.group(2))["level"]]


def wait_for_line(path: Path, event: str, timeout_s: float = 15.0) -> None:
    """Until the daemon has written ``event`` to its log file (a ready line, not a sleep)."""
    deadline = time.monotonic() + timeout_s
    while f'"event": "{event}"' not in path.read_text():
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.02)


def test_log_connections_false_keeps_the_counts_and_drops_the_lines(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    daemon = start_daemon(
        '[[listener]]\nname = "quiet"\nbind = "127.0.0.1:0"\nhandler = "echo"\n'
        "log_connections = false\n"
        '[[listener]]\nname = "loud"\nbind = "127.0.0.1:0"\nhandler = "echo"\n'
    )
    ports = daemon.ready()
    for _ in range(3):
        assert exchange(ports["quiet"], b"x") == b"x"
    assert exchange(ports["loud"], b"y") == b"y"
    daemon.wait_for("connection_closed")
    config = daemon.args[daemon.args.index("-c") + 1]
    shown = run_portd("status", "-c", config, "--json")
    totals = {x["name"]: x["total"] for x in json.loads(shown.stdout)["listeners"]}
    assert totals == {"quiet": 3, "loud": 1}
    closed = [e["listener"] for e in daemon.events if e.get("event") == "connection_closed"]
    assert closed == ["loud"]
