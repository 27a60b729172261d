"""A config's forward listeners seen through ``[daemon] toxiproxy_api``: listed with their
real port, faulted live by the API, but moved or deleted only by editing the config."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from portd.testing import serve
from tests.support import Daemon, write_config
from tests.toxiproxy.conftest import api_request

CONFIG = """\
[daemon]
toxiproxy_api = "127.0.0.1:0"

[[listener]]
name = "db"
bind = "127.0.0.1:0"
handler = "forward"
upstream = "127.0.0.1:{port}"
"""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Daemon, int, int]]:
    with serve("echo") as echo:
        config = write_config(tmp_path, CONFIG.format(port=echo.port))
        running = Daemon(["-c", str(config)])
        try:
            yield running, running.ready()["db"], echo.port
            running.signal(signal.SIGTERM)
            assert running.wait() == 0
        finally:
            running.stop()


def test_a_configs_forward_is_listed_faulted_live_and_kept(
    daemon: tuple[Daemon, int, int],
) -> None:
    """Its API address is logged before daemon_ready: a client may call it from then on."""
    running, port, echo_port = daemon
    (ready,) = (e for e in running.events if e.get("event") == "toxiproxy_api_ready")
    host, _, api_port = ready["address"].rpartition(":")

    def api(method: str, path: str, body: object = None) -> tuple[int, object]:
        return api_request(host, int(api_port), method, path, body)

    assert api("GET", "/proxies") == (200, {"db": {
        "name": "db", "listen": f"127.0.0.1:{port}", "upstream": f"127.0.0.1:{echo_port}",
        "enabled": True, "toxics": [],
    }})  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"before")
        assert client.recv(100) == b"before"
        toxic = {"type": "limit_data", "attributes": {"bytes": 10}}
        assert api("POST", "/proxies/db/toxics", toxic)[0] == 200
        client.sendall(b"0123456789abcdef")  # counted from the toxic's start, as toxiproxy does
        received = b""
        while chunk := client.recv(100):
            received += chunk
    assert received == b"0123456789"
    assert api("DELETE", "/proxies/db") == (409, {
        "error": "proxy db is defined in the config: edit it there", "status": 409,
    })  # fmt: skip
    assert api("DELETE", "/proxies/db/toxics/limit_data_downstream") == (204, None)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"after the toxic")
        assert client.recv(100) == b"after the toxic"
