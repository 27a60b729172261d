"""Helpers shared by the tests: running `portd` as a real process and reading its log."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from portd.config import ListenerConfig
from portd.endpoints.base import ProtocolName as Protocol
from portd.endpoints.parse import parse_endpoint
from portd.handlers.base import Handler

PORTD = (sys.executable, "-m", "portd")
READY_TIMEOUT_S = 15.0


def write_config(directory: Path, text: str, name: str = "portd.toml") -> Path:
    """Write a config file and return its path."""
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def run_portd(*args: str, timeout: float = 30, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a short-lived portd command to completion."""
    return subprocess.run(
        [*PORTD, *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def require_tool(name: str) -> str:
    """The path of an external program; skip when missing, unless CI demands it."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("PORTD_REQUIRE_TOOLS") == "1":
            pytest.fail(f"{name} is required (PORTD_REQUIRE_TOOLS=1) but not installed")
        pytest.skip(f"{name} is not installed")
    return path


class Daemon:
    """A running ``portd serve``; its stderr JSON log is read line by line in a thread."""

    def __init__(self, args: Sequence[str], prefix: Sequence[str] = (), **popen: Any) -> None:
        """Start ``[*prefix] python -m portd serve --log-format json [*args]``."""
        self.args = list(args)
        self.proc = subprocess.Popen(
            [*prefix, *PORTD, "serve", "--log-format", "json", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **popen,
        )
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "<not json>", "text": line}
            self.events.append(event)
            self._queue.put(event)
        self._queue.put(None)

    def wait_for(
        self,
        event: str,
        timeout: float = READY_TIMEOUT_S,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Block until the daemon logs ``event`` (and ``where`` holds); fail on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(
                    f"no {event!r} within {timeout}s; log so far:\n" + "\n".join(self.lines)
                )
            try:
                found = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if found is None:
                self.proc.wait()
                pytest.fail(
                    f"portd exited {self.proc.returncode} before {event!r}:\n"
                    + "\n".join(self.lines)
                )
            if found.get("event") == event and (where is None or where(found)):
                return found

    def events_until(
        self, event: str, count: int, timeout: float = READY_TIMEOUT_S
    ) -> list[dict[str, Any]]:
        """Block until ``count`` ``event`` lines were logged in all; return them."""
        deadline = time.monotonic() + timeout
        while len(found := [e for e in self.events if e.get("event") == event]) < count:
            self.wait_for(event, max(0.001, deadline - time.monotonic()))
        return found

    def ready(self) -> dict[str, int]:
        """Wait for ``daemon_ready``; return each IP listener's bound port by name."""
        self.wait_for("daemon_ready")
        return {
            e["listener"]: e["port"]
            for e in self.events
            if e.get("event") == "listener_started" and "port" in e
        }

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send a signal to the daemon."""
        self.proc.send_signal(signum)

    def wait(self, timeout: float = READY_TIMEOUT_S) -> int:
        """Wait for exit; return the exit code."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return code

    def stop(self) -> None:
        """Kill the process if it still runs (teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=READY_TIMEOUT_S)
        self._reader.join(timeout=READY_TIMEOUT_S)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def listener_config(
    handler: type[Handler],
    bind: str = "127.0.0.1:0",
    protocol: Protocol = "tcp",
    name: str = "test",
    index: int = 1,
) -> ListenerConfig:
    """A validated listener for in-process tests, with any Handler class (even unregistered)."""
    endpoint = parse_endpoint(bind, protocol)
    return ListenerConfig(index, name, endpoint, handler, {}, endpoint.resolve())


def flood_without_reading(pid: int, port: int, chunk: bytes) -> tuple[int, int]:
    """Send ``chunk`` over and over without ever reading, until no room is left for a
    whole second (or 256 MiB went out).

    Returns:
        ``(bytes sent, growth of the daemon's RSS)``: both stay small when the daemon
        stops reading from a peer that does not read.
    """
    import select

    import psutil

    process = psutil.Process(pid)
    rss_before = process.memory_info().rss
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setblocking(False)
        while sent < 256 << 20:
            if not select.select([], [sock], [], 1.0)[1]:
                break  # no room for a whole second: the daemon stopped reading
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                continue
        return sent, process.memory_info().rss - rss_before
