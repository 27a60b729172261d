"""exec's EOF and exit rules, one by one, on both loops and both byte paths (the socket as
the program's stdio, and portd's relay), against in-process servers."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from portd.testing import serve
from tests.handlers.exec.support import (
    LOOPS,
    PATHS,
    WAIT_S,
    client,
    exchange,
    read_to_eof,
    reset,
    zombies,
)

PAYLOAD = os.urandom(3 << 20)


@LOOPS
@PATHS
def test_bytes_go_through_cat_exactly(loop: str, relay: bool) -> None:
    with serve("exec", command=["cat"], relay=relay, loop=loop) as server:
        assert exchange(server.address, PAYLOAD) == PAYLOAD
        (record,) = server.wait_connections(1)
    assert (record.bytes_in, record.bytes_out) == (len(PAYLOAD), len(PAYLOAD))
    assert (record.how_it_ended, record.fields["exit_code"]) == ("closed", 0)
    assert record.fields["exit_signal"] is None
    assert record.fields["program_ms"] > 0


@LOOPS
@PATHS
def test_the_clients_fin_closes_stdin_and_output_still_reaches_the_client(
    loop: str, relay: bool
) -> None:
    program = ["/bin/sh", "-c", "cat; sleep 0.1; echo after-eof"]
    with serve("exec", command=program, relay=relay, loop=loop) as server:
        assert exchange(server.address, b"before\n") == b"before\nafter-eof\n"
        (record,) = server.wait_connections(1)
    assert record.fields["exit_code"] == 0


@LOOPS
@PATHS
def test_the_programs_exit_ends_the_connection_with_a_fin_after_its_output(
    loop: str, relay: bool
) -> None:
    """The client never half-closes: the program's exit alone ends the exchange."""
    with serve("exec", command=["printf", "hello"], relay=relay, loop=loop) as server:
        with client(server.address) as sock:
            assert read_to_eof(sock) == b"hello"  # a FIN: a reset would raise
        (record,) = server.wait_connections(1)
    assert (record.how_it_ended, record.fields["exit_code"]) == ("closed", 0)


@LOOPS
@PATHS
def test_a_client_that_sent_more_than_the_program_read_still_gets_a_fin(
    loop: str, relay: bool
) -> None:
    """head reads 3 bytes and exits with 1 MiB unread: portd half-closes after its output
    and drops the rest, instead of a close that would send an RST over the output."""
    with serve("exec", command=["head", "-c", "3"], relay=relay, loop=loop) as server:
        assert exchange(server.address, PAYLOAD[: 1 << 20]) == PAYLOAD[:3]
        (record,) = server.wait_connections(1)
    assert record.how_it_ended == "closed"


@LOOPS
@PATHS
def test_a_killed_program_resets_the_connection(loop: str, relay: bool) -> None:
    program = ["/bin/sh", "-c", "echo partial; sleep 0.1; kill -9 $$"]
    with serve("exec", command=program, relay=relay, loop=loop) as server:
        with client(server.address) as sock, pytest.raises(ConnectionResetError):
            read_to_eof(sock)
        (record,) = server.wait_connections(1)
    assert record.fields["exit_signal"] == "SIGKILL"
    assert record.fields["exit_code"] is None
    assert record.how_it_ended == "aborted"


@LOOPS
@PATHS
def test_the_clients_reset_hangs_the_program_up(loop: str, relay: bool) -> None:
    with serve("exec", command=["sleep", "30"], relay=relay, loop=loop) as server:
        sock = client(server.address)
        sock.sendall(b"x")
        reset(sock)
        (record,) = server.wait_connections(1)
    assert record.fields["exit_signal"] == "SIGHUP"
    assert record.how_it_ended == "reset"
    assert record.duration_s < 5


@LOOPS
@PATHS
def test_a_program_that_ignores_the_hangup_is_killed_after_the_grace(
    loop: str, relay: bool, tmp_path: Path
) -> None:
    marker = tmp_path / "hup"
    note = f"pathlib.Path({str(marker)!r}).write_text('hup')"
    script = (
        "import pathlib, signal, sys, time\n"
        f"signal.signal(signal.SIGHUP, lambda *_: {note})\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    program = [sys.executable, "-c", script]
    with serve("exec", command=program, relay=relay, kill_grace_s=0.3, loop=loop) as server:
        sock = client(server.address)
        assert sock.recv(6) == b"ready\n"
        started = time.monotonic()
        reset(sock)
        (record,) = server.wait_connections(1)
        waited = time.monotonic() - started
    assert marker.read_text() == "hup"
    assert record.fields["exit_signal"] == "SIGKILL"
    assert 0.3 <= waited < 5


@LOOPS
@PATHS
def test_timeout_s_stops_a_program_that_hangs_and_resets(loop: str, relay: bool) -> None:
    with serve("exec", command=["sleep", "30"], timeout_s=0.2, relay=relay, loop=loop) as server:
        with client(server.address) as sock:
            started = time.monotonic()
            with pytest.raises(ConnectionResetError):
                read_to_eof(sock)
            assert time.monotonic() - started < 3
        (record,) = server.wait_connections(1)
    assert record.fields["exit_signal"] == "SIGTERM"


@LOOPS
def test_leftovers_of_the_programs_session_are_hung_up_when_it_exits(
    loop: str, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    program = ["/bin/sh", "-c", f"sleep 30 & echo $! > {pid_file}; echo started"]
    with serve("exec", command=program, loop=loop) as server:
        with client(server.address) as sock:
            assert read_to_eof(sock) == b"started\n"
        server.wait_connections(1)
    leftover = int(pid_file.read_text())
    deadline = time.monotonic() + WAIT_S
    while _alive(leftover) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling the kernel's process table: no event says "gone"
    assert not _alive(leftover)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@LOOPS
@PATHS
def test_no_program_is_left_unreaped(loop: str, relay: bool) -> None:
    commands = [["true"], ["false"], ["sleep", "30"], ["cat"]]
    with serve("exec", command=["cat"], relay=relay, loop=loop):
        pass
    for command in commands:
        with serve("exec", command=command, relay=relay, loop=loop) as server:
            sock = client(server.address)
            if command[0] == "sleep":
                reset(sock)
            else:
                sock.shutdown(socket.SHUT_WR)
                read_to_eof(sock)
                sock.close()
            server.wait_connections(1)
    assert zombies() == []


def test_a_program_gets_only_stdin_stdout_and_stderr() -> None:
    """Nothing else of portd's (its listening socket, its event loop's descriptors)."""
    inherited = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(inherited, True)  # as one left to portd by whoever started it
    try:
        with serve("exec", command=["ls", "/proc/self/fd"], stderr="null") as server:
            listed = exchange(server.address, b"").split()
    finally:
        os.close(inherited)
    assert sorted(listed) == [b"0", b"1", b"2", b"3"]  # 3: ls's own directory


@LOOPS
def test_the_socket_path_gives_the_program_the_socket_itself(loop: str) -> None:
    program = ["/bin/sh", "-c", "readlink /proc/self/fd/0 /proc/self/fd/1"]
    with serve("exec", command=program, loop=loop) as server:
        socket_io = exchange(server.address, b"").split()
    with serve("exec", command=program, relay=True, loop=loop) as server:
        relayed = exchange(server.address, b"").split()
    assert [name.split(b":")[0] for name in socket_io] == [b"socket", b"socket"]
    assert [name.split(b":")[0] for name in relayed] == [b"pipe", b"pipe"]


def test_a_program_that_cannot_start_resets_the_connection(tmp_path: Path) -> None:
    script = tmp_path / "tool"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    with serve("exec", command=[str(script)]) as server:
        script.chmod(0o644)  # after the load-time check: every start now fails (EACCES)
        with client(server.address) as sock, pytest.raises(ConnectionResetError):
            read_to_eof(sock)
        (record,) = server.wait_connections(1)
    assert record.how_it_ended == "aborted"


def test_signals_start_at_their_defaults() -> None:
    """Python ignores SIGPIPE; a program must not inherit that (yes | head would spin).
    Signals 1-31 count: glibc's posix_spawn leaves its own two internal real-time
    signals (32, 33) ignored, and every glibc program installs its handlers for them."""
    program = ["/bin/sh", "-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status"]
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        with serve("exec", command=program) as server:
            lines = exchange(server.address, b"").decode().split("\n")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    masks = dict(line.split(":\t") for line in lines if line)
    assert int(masks["SigIgn"], 16) & 0x7FFFFFFF == 0
    assert int(masks["SigBlk"], 16) == 0


def test_without_the_c_librarys_posix_spawn_popen_starts_programs_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the C library lacks the functions (or for a user switch), Popen starts the
    program: the same bytes, the same end, nothing but stdio inherited."""
    from portd.handlers.exec import libc

    monkeypatch.setattr(libc, "AVAILABLE", False)
    from portd.handlers.exec.handler import ExecHandler

    with serve("exec", command=["cat"]) as server:
        handler = server.running.listener.handler if server.running.listener else None
        assert isinstance(handler, ExecHandler)
        assert handler.program.prepared is None
        assert exchange(server.address, PAYLOAD) == PAYLOAD
        (record,) = server.wait_connections(1)
    assert (record.how_it_ended, record.fields["exit_code"]) == ("closed", 0)
    with serve("exec", command=["ls", "/proc/self/fd"], stderr="null") as server:
        assert sorted(exchange(server.address, b"").split()) == [b"0", b"1", b"2", b"3"]
