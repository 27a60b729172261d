"""`portd connect -U PATH` and `portd connect unix:PATH` (stream) as real processes: files
byte-exact to and from nc -lU and socat UNIX-LISTEN, -v naming the server's pid and
uid, -z, and one-line failures that say what is at the path.

nc -lvU prints "Listening on PATH" and socat -d -d "listening on AF=1 "PATH"" once they
listen: the tests wait for those lines, never a sleep.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import Spawner, write_payload
from tests.support import require_tool

SIZES = pytest.mark.parametrize("size", [0, 1 << 20], ids=["empty", "1MiB"])
NC_READY = "^Listening on "
SOCAT_READY = 'listening on AF=1 "'
SOCKET_STATES = ("missing", "stale", "datagram", "stream")


def receiving(tool: str, path: Path, saved: Path) -> tuple[list[str], str]:
    """``tool`` listening at ``path``, saving what it receives into ``saved``."""
    if tool == "nc":
        return [require_tool("nc"), "-lvU", str(path)], NC_READY
    return [require_tool("socat"), "-d", "-d", "-u", f"UNIX-LISTEN:{path}", f"CREATE:{saved}"], (
        SOCAT_READY
    )


def sending(tool: str, path: Path, payload: Path) -> tuple[list[str], str]:
    """``tool`` listening at ``path``, sending the file at ``payload`` and ending its side."""
    if tool == "nc":
        return [require_tool("nc"), "-lNvU", str(path)], NC_READY
    return [require_tool("socat"), "-d", "-d", "-u", f"FILE:{payload}", f"UNIX-LISTEN:{path}"], (
        SOCAT_READY
    )


@SIZES
@pytest.mark.parametrize("tool", ["nc", "socat"])
@pytest.mark.parametrize("form", ["-U", "unix:"])
def test_sends_stdin_byte_exact(
    spawn: Spawner, tmp_path: Path, tool: str, size: int, form: str
) -> None:
    payload = write_payload(tmp_path / "payload", size)
    path, saved = tmp_path / "s.sock", tmp_path / "saved"
    argv, ready = receiving(tool, path, saved)
    peer = spawn(*argv, stdout=saved if tool == "nc" else None)
    peer.expect(ready)
    target = ["-U", str(path)] if form == "-U" else [f"unix:{path}"]
    connect = spawn.portd("connect", *target, stdin=tmp_path / "payload")
    assert connect.wait() == 0, connect.stderr
    assert peer.wait() == 0, peer.stderr
    assert saved.read_bytes() == payload
    assert connect.output == b""
    assert connect.lines == []


@SIZES
@pytest.mark.parametrize("tool", ["nc", "socat"])
def test_receives_byte_exact(spawn: Spawner, tmp_path: Path, tool: str, size: int) -> None:
    payload = write_payload(tmp_path / "payload", size)
    path = tmp_path / "s.sock"
    argv, ready = sending(tool, path, tmp_path / "payload")
    peer = spawn(*argv, stdin=tmp_path / "payload" if tool == "nc" else subprocess.DEVNULL)
    peer.expect(ready)
    connect = spawn.portd("connect", "-dU", str(path))
    assert connect.wait() == 0, connect.stderr
    assert peer.wait() == 0, peer.stderr
    assert connect.output == payload


def test_verbose_names_the_server_by_pid_and_uid(spawn: Spawner, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    nc = spawn(require_tool("nc"), "-lNvU", str(path), stdin=subprocess.DEVNULL)
    nc.expect(NC_READY)
    connect = spawn.portd("connect", "-v", "-U", str(path))
    assert connect.wait() == 0, connect.stderr
    assert connect.lines[0] == (
        f"connected to unix:{path} (stream), served by pid {nc.proc.pid} uid {os.getuid()}"
    )
    assert connect.lines[-1] == f"connection to unix:{path} closed"


def test_zero_io_checks_that_a_socket_accepts(spawn: Spawner, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        check = spawn.portd("connect", "-zvU", str(path))
        assert check.wait() == 0
        assert check.lines == [f"connection to unix:{path} (stream) succeeded"]
    quiet = spawn.portd("connect", "-zU", str(tmp_path / "missing.sock"))
    assert quiet.wait() == 1
    assert quiet.lines == []


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """What can be at a path, by name: nothing, a stale socket (bound, closed), a regular
    file, a live datagram socket, a live stream socket."""
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(tmp_path / "stale.sock"))
    (tmp_path / "file").write_bytes(b"")
    datagram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with datagram, stream:
        datagram.bind(str(tmp_path / "datagram.sock"))
        stream.bind(str(tmp_path / "stream.sock"))
        stream.listen()
        found = {name: tmp_path / f"{name}.sock" for name in SOCKET_STATES}
        yield {**found, "file": tmp_path / "file"}


@pytest.mark.parametrize(
    ("target", "flags", "reason"),
    [
        ("missing", [], "no such socket (nothing was ever bound there, or its server removed it)"),
        ("stale", [], "connection refused: nothing accepts on it (left by a server that ended?)"),
        ("file", [], "it is not a socket"),
        ("datagram", [], "it is a datagram socket: add -u"),
        ("stream", ["-u"], "it is a stream socket: leave out -u"),
    ],
)  # fmt: skip
def test_failures_say_what_is_there_and_exit_1(
    spawn: Spawner, paths: dict[str, Path], target: str, flags: list[str], reason: str
) -> None:
    """One line, exit 1, and nothing at any of the paths touched."""
    before = sorted(path.name for path in paths["file"].parent.iterdir())
    connect = spawn.portd("connect", *flags, "-U", str(paths[target]))
    assert connect.wait() == 1
    label = "datagram" if flags else "stream"
    assert connect.lines == [f"portd: connect to unix:{paths[target]} ({label}) failed: {reason}"]
    assert sorted(path.name for path in paths["file"].parent.iterdir()) == before


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["-U"], "portd connect: error: the following arguments are required: HOST PORT"),
        (["-U", "a", "b"], "portd: -U takes one PATH (the socket file, or @NAME), got 'a b'"),
        (["-p", "5000", "-U", "x"],
         "portd: -p PORT: a unix socket has no port (-s PATH binds the client's own)"),
        (["-6", "unix:x"], "portd: -4/-6 apply to IP addresses, not unix sockets"),
        (["-zu", "unix:x"], "portd: -z with -u: a datagram socket has no handshake to check; "
         "send a datagram with portd connect -uU and read the answer"),
        (["unix:"], "portd: empty unix socket path; expected unix:/PATH or unix:@NAME"),
    ],
    ids=["no-path", "two-paths", "port", "family", "z-u", "empty"],
)  # fmt: skip
def test_refusals_are_one_line_and_64(spawn: Spawner, args: list[str], line: str) -> None:
    connect = spawn.portd("connect", *args)
    assert connect.wait() == 64
    assert connect.lines[-1] == line
