"""A ``portd toxiproxy --port 0`` daemon per test, its API address read from its log."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import PORTD, Daemon


class ToxiproxyDaemon(Daemon):
    """``portd toxiproxy`` instead of ``portd serve``, with the same log reader."""

    def __init__(self, *args: str) -> None:
        self.args = list(args)
        self.proc = subprocess.Popen(
            [*PORTD, "toxiproxy", "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._start_reader()
        ready = self.wait_for("toxiproxy_api_ready")
        self.host, _, port = ready["address"].rpartition(":")
        self.port = int(port)

    def _start_reader(self) -> None:
        import queue
        import threading

        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One API request; the status and the JSON answer (None when empty)."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
            connection.request(method, path, body=data)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        return response.status, json.loads(raw) if raw else None


@pytest.fixture
def toxiproxy() -> Iterator[ToxiproxyDaemon]:
    daemon = ToxiproxyDaemon()
    try:
        yield daemon
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.stop()
