"""exec behind a TLS listener: portd relays (the socket carries ciphertext, so no
program may hold it), says so at start, carries the bytes both ways exactly (openssl
s_client and Python's ssl as clients), closes with close_notify when the program
exits, and gives a client's close_notify to the program as EOF after what it sent."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from portd.testing.tls import session_authority
from tests.handlers.exec.support import WAIT_S
from tests.handlers.exec.test_exec_daemon import closed_lines
from tests.support import Daemon, require_tool
from tests.tls.files import NAMES, Pair, tls_table, write_pair

ONE_MIB = 1 << 20
SMALL = 64 << 10
LOOPS = pytest.mark.parametrize("loop", ["uvloop", "asyncio"])


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return write_pair(tmp_path, session_authority().authority.issue(NAMES))


def exec_over_tls(pair: Pair, command: str, loop: str = "uvloop") -> str:
    table = tls_table(pair, f"command = {command}\n", handler="exec", name="run")
    return f'[daemon]\nloop = "{loop}"\n' + table


def tls_client(port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=session_authority().ca_path)
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    try:
        return context.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def read_to_close_notify(sock: ssl.SSLSocket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def event(daemon: Daemon, name: str) -> dict[str, Any]:
    return next(e for e in daemon.events if e.get("event") == name)


@LOOPS
def test_exec_behind_tls_relays_says_so_and_closes_when_the_program_exits(
    start_daemon: Callable[..., Daemon], pair: Pair, loop: str
) -> None:
    # head exits after SMALL bytes; readlink names its stdin: a pipe from portd, not the
    # socket. SMALL fits the buffers both ways: one thread sends, then reads (an SSL
    # socket must not be read and written from two threads at once).
    command = f'["/bin/sh", "-c", "head -c {SMALL}; readlink /proc/self/fd/0"]'
    daemon = start_daemon(exec_over_tls(pair, command, loop))
    port = daemon.ready()["run"]
    started = event(daemon, "listener_started")
    assert (started["exec_io"], started["relay_reason"], started["tls"]) == ("relay", "tls", True)
    payload = os.urandom(SMALL)
    with tls_client(port) as client:
        client.sendall(payload)
        received = read_to_close_notify(client)  # the client never closes: portd does
    assert received[:SMALL] == payload
    assert received[SMALL:].startswith(b"pipe:[")
    line = daemon.wait_for("connection_closed")
    assert (line["exit_code"], line["exit_signal"], line["error"]) == (0, None, None)
    assert line["bytes_in"] == SMALL


def test_openssl_s_client_through_cat_byte_for_byte(
    start_daemon: Callable[..., Daemon], pair: Pair, tmp_path: Path
) -> None:
    openssl = require_tool("openssl")
    daemon = start_daemon(exec_over_tls(pair, f'["head", "-c", "{ONE_MIB}"]'))
    port = daemon.ready()["run"]
    sent = tmp_path / "in"
    sent.write_bytes(os.urandom(ONE_MIB))
    with sent.open("rb") as stdin:  # -quiet: s_client waits for the server's close
        done = subprocess.run(
            [openssl, "s_client", "-quiet", "-verify_return_error", "-CAfile",
             session_authority().ca_path, "-servername", "localhost",
             "-connect", f"127.0.0.1:{port}"],
            stdin=stdin, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == sent.read_bytes()
    assert daemon.wait_for("connection_closed")["exit_code"] == 0


@LOOPS
def test_a_client_close_notify_is_the_programs_eof_after_what_it_sent(
    start_daemon: Callable[..., Daemon], pair: Pair, tmp_path: Path, loop: str
) -> None:
    counted = tmp_path / "counted"
    daemon = start_daemon(exec_over_tls(pair, f'["/bin/sh", "-c", "wc -c >> {counted}"]', loop))
    port = daemon.ready()["run"]
    # Several in a row: asyncio's TLS transport, closed twice, forgets its session, and
    # the connection was once asked for it after that (a handler failure, a hung program).
    for size in range(300_000, 300_020):
        with tls_client(port) as client:
            client.sendall(b"x" * size)
            client.unwrap()  # close_notify, and portd's in return
    lines = closed_lines(daemon, 20)
    assert [(e["exit_code"], e["exit_signal"]) for e in lines] == [(0, None)] * 20  # finished
    assert sorted(counted.read_text().split()) == [str(n) for n in range(300_000, 300_020)]
    assert not any("eof_received" in text for text in daemon.lines)  # no asyncio warning
    assert not any('"level": "error"' in text for text in daemon.lines)


def test_a_program_that_ignores_the_close_notify_is_hung_up_after_kill_grace_s(
    start_daemon: Callable[..., Daemon], pair: Pair
) -> None:
    config = exec_over_tls(pair, '["sleep", "60"]') + "kill_grace_s = 0.3\n"
    daemon = start_daemon(config)
    port = daemon.ready()["run"]
    with tls_client(port) as client:
        client.unwrap()
    line = daemon.wait_for("connection_closed")
    assert line["exit_signal"] == "SIGHUP"
    assert 300 <= line["program_ms"] < 10_000
