"""Echo interop with the real netcat (netcat-openbsd) and socat that users reach for."""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Callable

import pytest

from tests.support import Daemon, require_tool

StartDaemon = Callable[..., Daemon]

ECHO_CONFIG = textwrap.dedent("""
    [[listener]]
    name = "tcp"
    bind = "127.0.0.1:0"
    handler = "echo"

    [[listener]]
    name = "udp"
    bind = "127.0.0.1:0"
    protocol = "udp"
    handler = "echo"
""")


@pytest.fixture
def echo_ports(start_daemon: StartDaemon) -> dict[str, int]:
    """A daemon serving TCP and UDP echo; the bound ports by listener name."""
    return start_daemon(ECHO_CONFIG).ready()


@pytest.mark.parametrize("size", [0, 1 << 20], ids=["empty", "1MiB"])
def test_nc_gets_back_exactly_what_it_sent_over_tcp(echo_ports: dict[str, int], size: int) -> None:
    """`nc -N` half-closes after stdin; echo flushes everything back, then closes."""
    nc = require_tool("nc")
    payload = os.urandom(size)
    result = subprocess.run(
        [nc, "-N", "127.0.0.1", str(echo_ports["tcp"])],
        input=payload, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload


def test_nc_gets_a_udp_datagram_echoed(echo_ports: dict[str, int]) -> None:
    nc = require_tool("nc")
    result = subprocess.run(
        [nc, "-u", "-w", "1", "127.0.0.1", str(echo_ports["udp"])],
        input=b"datagram\n", capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.stdout == b"datagram\n"


def test_socat_gets_back_exactly_what_it_sent_over_tcp(echo_ports: dict[str, int]) -> None:
    socat = require_tool("socat")
    payload = os.urandom(256 * 1024)
    result = subprocess.run(
        [socat, "-t", "10", "-", f"TCP:127.0.0.1:{echo_ports['tcp']}"],
        input=payload, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload
