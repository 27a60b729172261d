"""Kernel settings: the reserved-ports grammar and sysctl line, and the warnings
`portd check` prints and `portd serve` logs, in a namespace whose ephemeral range and
somaxconn the test sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from portd.inspect.kernel import PortSettings, parse_port_ranges, reserve_command
from tests.netns import Netns, netns
from tests.support import PORTD, write_config

__all__ = ["netns"]

CONFIG = """
[[listener]]
name = "web"
bind = "127.0.0.1:40080"
handler = "echo"
backlog = 512

[[listener]]
name = "dns"
bind = "127.0.0.1:40080"
protocol = "udp"
handler = "echo"
"""


@pytest.mark.parametrize(
    ("text", "ranges"),
    [("", ()), ("8080", ((8080, 8080),)), ("1,2-4,10-10", ((1, 1), (2, 4), (10, 10)))],
)
def test_reserved_ports_grammar(text: str, ranges: tuple[tuple[int, int], ...]) -> None:
    assert parse_port_ranges(text) == ranges


def test_the_reserve_line_keeps_what_is_reserved() -> None:
    settings = PortSettings(1024, (32768, 60999), ((9000, 9100), (40001, 40001)), 4096, False)
    assert reserve_command([40080], settings) == (
        "sysctl -w net.ipv4.ip_local_reserved_ports=9000-9100,40001,40080"
    )
    assert settings.is_ephemeral(40080)
    assert not settings.is_ephemeral(40001)  # reserved
    assert not settings.is_ephemeral(9050)  # below the range


def warnings_of(netns: Netns, config: Path) -> list[str]:
    check = netns.portd("check", str(config))
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(f"{config}: OK, 2 listeners\n")
    return check.stderr.splitlines()


def test_check_warns_about_an_ephemeral_port_until_it_is_reserved(
    netns: Netns, tmp_path: Path
) -> None:
    config = write_config(tmp_path, CONFIG)
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40100")
    line = (
        "port 40080 is in the ephemeral range 40000-40100 and not reserved: an outgoing "
        "connection can take it before the listener binds; reserve it: "
        "sysctl -w net.ipv4.ip_local_reserved_ports=40080"
    )
    assert warnings_of(netns, config) == [
        f'portd: warning: listener "web": {line}',
        f'portd: warning: listener "dns": {line}',
    ]
    netns.sysctl("net.ipv4.ip_local_reserved_ports", "40080")
    assert warnings_of(netns, config) == []


def test_check_warns_about_a_backlog_above_somaxconn(netns: Netns, tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG)
    netns.sysctl("net.core.somaxconn", "256")
    netns.sysctl("net.ipv4.ip_local_reserved_ports", "40080")  # no ephemeral-port warning
    assert warnings_of(netns, config) == [
        'portd: warning: listener "web": backlog 512 is above net.core.somaxconn (256): '
        "the kernel queues at most 256; raise it: sysctl -w net.core.somaxconn=512"
    ]


def test_serve_logs_the_warnings_and_serves(netns: Netns, tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG)
    netns.sysctl("net.ipv4.ip_local_port_range", "40000 40100")
    netns.sysctl("net.core.somaxconn", "256")
    daemon = netns.start(*PORTD, "serve", "--log-format", "json", "-c", str(config))
    daemon.expect('"event": "daemon_ready"')
    events = [json.loads(line) for line in daemon.lines]
    warnings = [(e["event"], e["listener"]) for e in events if e["level"] == "warning"]
    assert warnings == [
        ("port_in_ephemeral_range", "web"),
        ("backlog_above_somaxconn", "web"),
        ("port_in_ephemeral_range", "dns"),
    ]
    assert events[0]["message"].endswith(
        "reserve it: sysctl -w net.ipv4.ip_local_reserved_ports=40080"
    )
    assert [e["event"] for e in events].count("listener_started") == 2
