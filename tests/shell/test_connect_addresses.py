"""connect and wait name every address a host resolves to and how each attempt ended
(refused, timed out, no route, network unreachable), in a network namespace of the
test's own: there ``localhost`` is ::1 then 127.0.0.1, a firewall rule can make one of
them time out, and routes can be missing or unreachable on purpose.
"""

from __future__ import annotations

import re

from tests.netns import Netns, netns
from tests.support import PORTD

__all__ = ["netns"]

PORT = 8080  # a fixed port is fine here: the namespace is the test's own
DROP_V4 = f"""
table ip t {{
    chain input {{
        type filter hook input priority 0; policy accept;
        tcp dport {PORT} drop
    }}
}}
"""


def test_connect_names_each_address_of_a_name_that_fails(netns: Netns) -> None:
    """[::1] refuses (nothing listens), 127.0.0.1 drops: two different failures, one line."""
    netns.nft(DROP_V4)
    connect = netns.portd("connect", "-w", "0.3", "localhost", str(PORT))
    assert connect.returncode == 1
    assert connect.stderr.splitlines() == [
        f"portd: connect to localhost:{PORT} (tcp) failed: [::1]:{PORT} connection refused, "
        f"127.0.0.1:{PORT} timed out after 0.3 s"
    ]


def test_connect_verbose_shows_every_address_tried(netns: Netns) -> None:
    """Nothing on ::1, a listener on 127.0.0.1: -v shows the refusal, then the success."""
    listen = netns.start(*PORTD, "listen", f"127.0.0.1:{PORT}")  # stdin ends: it half-closes
    listen.expect("^listening on ")
    connect = netns.portd("connect", "-v", "-d", "localhost", str(PORT))
    assert connect.returncode == 0, connect.stderr
    lines = connect.stderr.splitlines()
    assert re.fullmatch(rf"trying \[::1\]:{PORT}: connection refused after [\d.]+ ms", lines[0])
    assert re.fullmatch(rf"trying 127\.0\.0\.1:{PORT}: connected in [\d.]+ ms", lines[1])
    assert lines[2] == f"connected to localhost:{PORT} (tcp)"


def test_connect_tells_no_route_from_unreachable_network(netns: Netns) -> None:
    netns.run("ip", "route", "add", "unreachable", "203.0.113.0/24")
    no_route = netns.portd("connect", "203.0.113.7", "80")
    no_network = netns.portd("connect", "198.51.100.7", "80")  # no route at all
    assert (no_route.returncode, no_network.returncode) == (1, 1)
    assert no_route.stderr.splitlines() == [
        "portd: connect to 203.0.113.7:80 (tcp) failed: no route to host: "
        "the host is down, or no route leads there from here"
    ]
    assert no_network.stderr.splitlines() == [
        "portd: connect to 198.51.100.7:80 (tcp) failed: network is unreachable: "
        "the host is down, or no route leads there from here"
    ]


def test_wait_names_each_address_still_down(netns: Netns) -> None:
    netns.nft(DROP_V4)
    wait = netns.portd("wait", "--timeout", "1", "-v", f"localhost:{PORT}")
    assert wait.returncode == 1
    assert wait.stderr.splitlines() == [
        f"localhost:{PORT} is down: [::1]:{PORT} connection refused, 127.0.0.1:{PORT} timed out",
        f"portd: localhost:{PORT} is still down after 1 s: "
        f"[::1]:{PORT} connection refused, 127.0.0.1:{PORT} timed out",
    ]
