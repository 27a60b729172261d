"""exec over UDP, inetd's ``wait``: one program holds the socket and reads the waking
datagram itself, portd's gate judges that datagram only, the drain stops the program,
``nc -u`` is a client, on both loops."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from portd.errors import ConfigError
from portd.testing import serve
from tests.handlers.exec.support import LOOPS, WAIT_S, zombies
from tests.support import Daemon, require_tool

# Answers two datagrams with "<upper case> <its pid>", then exits.
TWO_ANSWERS = [sys.executable, "-c", (
    "import os, socket\n"
    "s = socket.socket(fileno=0)\n"
    "for _ in range(2):\n"
    "    data, peer = s.recvfrom(100)\n"
    "    s.sendto(data.upper() + b' %d' % os.getpid(), peer)\n"
)]  # fmt: skip


def ask(client: socket.socket, address: Any, data: bytes) -> tuple[bytes, int]:
    client.sendto(data, address)
    answer, _ = client.recvfrom(200)
    word, pid = answer.split()
    return word, int(pid)


@LOOPS
def test_one_program_holds_the_socket_until_it_exits(loop: str) -> None:
    with (
        serve("exec", protocol="udp", command=TWO_ANSWERS, loop=loop) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(WAIT_S)
        answers = [ask(client, server.address, word) for word in (b"a", b"b", b"c", b"d")]
        waking = server.wait_datagrams(2)
    assert [word for word, _ in answers] == [b"A", b"B", b"C", b"D"]
    pids = [pid for _, pid in answers]
    assert pids[0] == pids[1] != pids[2] == pids[3]  # the waking datagram reached it
    assert [d.payload for d in waking] == [b"a", b"c"]  # portd saw the wakers only
    assert zombies() == []


def test_the_gate_judges_the_waking_datagram() -> None:
    with (
        serve("exec", protocol="udp", command=TWO_ANSWERS, deny=["127.0.0.1"]) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(0.3)
        client.sendto(b"refused", server.address)
        with pytest.raises(TimeoutError):
            client.recvfrom(200)  # dropped, read by portd: no program was started
        assert server.datagrams == ()


def test_the_program_is_told_who_woke_it() -> None:
    program = [sys.executable, "-c", (
        "import os, socket\n"
        "s = socket.socket(fileno=0)\n"
        "_, peer = s.recvfrom(100)\n"
        "names = ('PROTO', 'UDPREMOTEIP', 'UDPREMOTEPORT', 'UDPLOCALIP', 'UDPLOCALPORT')\n"
        "s.sendto(' '.join(os.environ[n] for n in names).encode(), peer)\n"
    )]  # fmt: skip
    with (
        serve("exec", protocol="udp", command=program) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(WAIT_S)
        client.sendto(b"?", server.address)
        answer = client.recvfrom(200)[0].decode().split()
        here = client.getsockname()
    assert answer == ["UDP", "127.0.0.1", str(here[1]), "127.0.0.1", str(server.port)]


def test_nc_u_is_answered(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    nc = require_tool("nc")
    code = "import socket; s = socket.socket(fileno=0); d, p = s.recvfrom(99); s.sendto(d[::-1], p)"
    program = json.dumps([sys.executable, "-c", code])
    daemon = start_daemon(
        f'[[listener]]\nname = "u"\nbind = "127.0.0.1:0"\nprotocol = "udp"\nhandler = "exec"\n'
        f"command = {program}\n"
    )
    port = daemon.ready()["u"]
    done = subprocess.run(
        [nc, "-u", "-w", "2", "127.0.0.1", str(port)], input=b"olleh", capture_output=True,
        timeout=30, check=False,
    )  # fmt: skip
    assert done.stdout == b"hello"
    exited = daemon.wait_for("program_exited")
    assert (exited["exit_code"], exited["exit_signal"]) == (0, None)


def test_the_drain_stops_the_program_sigterm_then_sigkill(
    start_daemon: Callable[..., Daemon],
) -> None:
    program = '["/bin/sh", "-c", "trap \\"\\" TERM; while :; do sleep 0.05; done"]'
    daemon = start_daemon(
        "[daemon]\nshutdown_timeout_s = 0.5\n"
        f'[[listener]]\nname = "u"\nbind = "127.0.0.1:0"\nprotocol = "udp"\nhandler = "exec"\n'
        f"command = {program}\n"
    )
    port = daemon.ready()["u"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"wake", ("127.0.0.1", port))
    _wait_for_child(daemon)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    exited = next(e for e in daemon.events if e.get("event") == "program_exited")
    assert exited["exit_signal"] == "SIGKILL"
    assert exited["program_ms"] >= 500


def _wait_for_child(daemon: Daemon) -> None:
    import time

    from tests.handlers.exec.support import children

    deadline = time.monotonic() + WAIT_S
    while not children(daemon.proc.pid):
        assert time.monotonic() < deadline, "the program did not start"
        time.sleep(0.01)  # the kernel's process table gives no event for a new child


@pytest.mark.parametrize(
    ("option", "says"),
    [({"stderr": "connection"}, 'stderr = "connection": a datagram socket has no peer'),
     ({"relay": True}, "relay = true: over UDP the program always holds the socket")],
    ids=["stderr", "relay"],
)  # fmt: skip
def test_options_that_mean_nothing_on_udp_are_refused(option: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        serve("exec", protocol="udp", command=["cat"], **option).__enter__()
