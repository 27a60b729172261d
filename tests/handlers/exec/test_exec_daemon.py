"""exec in a real ``portd serve``: nc and socat as clients, 50 programs at once, the
max_connections bound, the drain (SIGTERM at once, SIGKILL at shutdown_timeout_s), and
no zombie after 200 connections with random resets, all read in /proc."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.handlers.exec.support import WAIT_S, children, read_to_eof, reset, zombies
from tests.support import Daemon, require_tool

TEN_MIB = 10 << 20


def listener(command: str, extra: str = "", name: str = "run") -> str:
    return (
        f'[[listener]]\nname = "{name}"\nbind = "127.0.0.1:0"\nhandler = "exec"\n'
        f"command = {command}\n{extra}"
    )


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll the kernel's process table (no event says "exited"), failing after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_S} s: {what}")
        time.sleep(0.01)


def closed_lines(daemon: Daemon, count: int) -> list[dict[str, Any]]:
    """The first ``count`` connection_closed lines, waiting for them."""
    daemon.wait_for(
        "connection_closed",
        where=lambda _e: sum(e.get("event") == "connection_closed" for e in daemon.events) >= count,
    )
    return [e for e in daemon.events if e.get("event") == "connection_closed"]


@pytest.mark.parametrize("relay", ["false", "true"], ids=["socket", "relay"])
def test_ten_mib_through_cat_with_nc_and_socat_byte_for_byte(
    start_daemon: Callable[..., Daemon], tmp_path: Path, relay: str
) -> None:
    nc, socat = require_tool("nc"), require_tool("socat")
    daemon = start_daemon(listener('["cat"]', f"relay = {relay}\n"))
    port = daemon.ready()["run"]
    started = next(e for e in daemon.events if e.get("event") == "listener_started")
    assert started["exec_io"] == ("relay" if relay == "true" else "socket")
    payload = tmp_path / "in"
    payload.write_bytes(os.urandom(TEN_MIB))
    for argv in ([nc, "-N", "127.0.0.1", str(port)],
                 [socat, "-t", "30", "-", f"TCP:127.0.0.1:{port}"]):  # fmt: skip
        out = tmp_path / "out"
        with payload.open("rb") as stdin, out.open("wb") as stdout:
            subprocess.run(argv, stdin=stdin, stdout=stdout, timeout=60, check=True)
        assert out.read_bytes() == payload.read_bytes(), argv[0]
    lines = closed_lines(daemon, 2)
    for line in lines:
        assert (line["bytes_in"], line["bytes_out"]) == (TEN_MIB, TEN_MIB)
        assert (line["exit_code"], line["exit_signal"], line["error"]) == (0, None, None)


def test_a_limit_that_watches_the_bytes_makes_portd_relay_and_says_so(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon(listener('["cat"]', "idle_timeout_s = 30\n"))
    daemon.ready()
    started = next(e for e in daemon.events if e.get("event") == "listener_started")
    assert (started["exec_io"], started["relay_reason"]) == ("relay", "idle_timeout_s")
    assert started["command"] == "cat"


def test_fifty_programs_run_at_once(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(listener('["/bin/sh", "-c", "read line; echo \\"$line $$\\""]'))
    port = daemon.ready()["run"]
    clients = [socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) for _ in range(50)]
    try:
        wait_until(lambda: len(children(daemon.proc.pid)) == 50, "50 programs running")
        answers = set()
        for index, client in enumerate(clients):
            client.sendall(b"client%d\n" % index)
            word, pid = read_to_eof(client).split()
            assert word == b"client%d" % index
            answers.add(int(pid))
    finally:
        for client in clients:
            client.close()
    assert len(answers) == 50
    closed_lines(daemon, 50)
    assert children(daemon.proc.pid) == []


def test_max_connections_bounds_the_programs(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(listener('["sleep", "30"]', "max_connections = 3\n"))
    port = daemon.ready()["run"]
    clients = [socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) for _ in range(3)]
    try:
        wait_until(lambda: len(children(daemon.proc.pid)) == 3, "3 programs running")
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as fourth:
            assert read_to_eof(fourth) == b""  # closed at once, no program started
        daemon.wait_for("connection_refused")
        assert len(children(daemon.proc.pid)) == 3
    finally:
        for client in clients:
            reset(client)
    closed_lines(daemon, 3)


TRAPS_TERM = (
    '["/bin/sh", "-c", "trap \\"echo term\\" TERM; echo ready; while :; do sleep 0.05; done"]'
)


def test_the_drain_sends_sigterm_at_once_and_sigkill_at_shutdown_timeout(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon("[daemon]\nshutdown_timeout_s = 0.5\n" + listener(TRAPS_TERM))
    port = daemon.ready()["run"]
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as client:
        assert client.recv(6) == b"ready\n"
        daemon.signal(signal.SIGTERM)
        assert client.recv(5) == b"term\n"  # at once, while the drain waits
        with pytest.raises(ConnectionResetError):
            read_to_eof(client)  # killed at shutdown_timeout_s: an RST
    assert daemon.wait() == 0
    (line,) = closed_lines(daemon, 1)
    assert line["exit_signal"] == "SIGKILL"
    # SIGKILL at shutdown_timeout_s (500 ms) after the drain began, which was after the
    # program started; uvloop's timers count from a clock read when the loop last woke,
    # so one may fire a few ms early by monotonic time (499.3 ms was seen).
    assert line["program_ms"] >= 490


def test_a_program_that_ends_on_sigterm_ends_the_drain_early(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon("[daemon]\nshutdown_timeout_s = 30\n" + listener('["sleep", "60"]'))
    port = daemon.ready()["run"]
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as client:
        wait_until(lambda: len(children(daemon.proc.pid)) == 1, "the program running")
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        with pytest.raises(ConnectionResetError):
            read_to_eof(client)
        assert daemon.wait() == 0
        assert time.monotonic() - started < 10
    (line,) = closed_lines(daemon, 1)
    assert line["exit_signal"] == "SIGTERM"


@pytest.mark.parametrize("relay", ["false", "true"], ids=["socket", "relay"])
def test_no_zombie_after_200_connections_with_random_resets(
    start_daemon: Callable[..., Daemon], relay: str
) -> None:
    daemon = start_daemon(listener('["cat"]', f"relay = {relay}\nmax_connections = 200\n"))
    port = daemon.ready()["run"]
    rng = random.Random(14)
    for _ in range(200):
        client = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        client.sendall(b"x" * rng.randrange(1, 70000))
        if rng.random() < 0.5:
            reset(client)  # at some point while cat still copies
        else:
            client.shutdown(socket.SHUT_WR)
            read_to_eof(client)
            client.close()
    lines = closed_lines(daemon, 200)
    assert len(lines) == 200
    assert zombies(daemon.proc.pid) == []
    assert children(daemon.proc.pid) == []
