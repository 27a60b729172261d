"""`portd services NAME|PORT` as a real process: /etc/services both ways, aliases, and an
unknown name or port in one line with exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.processes import Spawner

SERVICES = Path("/etc/services")
pytestmark = pytest.mark.skipif(not SERVICES.exists(), reason="no /etc/services (netbase)")


def entries(name: str) -> list[str]:
    """``["http 80/tcp", ...]``: the protocols /etc/services lists ``name`` (or an alias) for,
    read from the file itself rather than through the C library portd uses."""
    found = []
    for line in SERVICES.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and name in fields[:1] + fields[2:]:
            port, _, protocol = fields[1].partition("/")
            if protocol in ("tcp", "udp"):
                found.append(f"{fields[0]} {port}/{protocol}")
    return found


@pytest.mark.parametrize("query", ["http", "80", "www"], ids=["name", "port", "alias"])
def test_finds_http_by_name_port_or_alias(spawn: Spawner, query: str) -> None:
    if query == "www" and not entries("www"):
        pytest.skip("this /etc/services has no www alias")
    services = spawn.portd("services", query)
    assert services.wait() == 0
    lines = services.output.decode().splitlines()
    assert lines[0] == "http 80/tcp"
    assert lines == entries("http")  # newer netbase also lists 80/udp (HTTP/3)
    assert services.lines == []


def test_lists_both_protocols_where_both_are_listed(spawn: Spawner) -> None:
    services = spawn.portd("services", "domain")
    assert services.wait() == 0
    assert services.output == b"domain 53/tcp\ndomain 53/udp\n"
    assert services.output.decode().splitlines() == entries("domain")


@pytest.mark.parametrize("query", ["no-such-service", "0", "99999", ""])
def test_unknown_exits_1_with_one_line(spawn: Spawner, query: str) -> None:
    services = spawn.portd("services", query)
    assert services.wait() == 1
    assert services.output == b""
    assert services.lines == [f"portd: no service {query!r} in /etc/services"]


def test_missing_argument_exits_64_with_usage(spawn: Spawner) -> None:
    services = spawn.portd("services")
    assert services.wait() == 64
    assert services.lines[0].startswith("usage: portd services ")
