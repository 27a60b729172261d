"""Unix datagram sockets in the shell (`-u` with `-U` or `unix:`), as real processes:
`listen -uU` against nc -uU and socat UNIX-SENDTO, `connect -uU` against socat
UNIX-RECVFROM and nc -luU; the client's own socket file, made and removed; the peer's
pid and uid with -v; a sender that cannot be answered."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import WAIT_S, Spawner
from tests.support import PORTD, require_tool

UID = os.getuid()
CLIENT_LINE = re.compile(r"^connected to unix:(\S+) \(datagram\) from (/\S+/client\.sock)$")


def datagram_server(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(WAIT_S)
    return sock


def test_listen_exchanges_datagrams_with_nc(spawn: Spawner, tmp_path: Path) -> None:
    """nc -uU binds a path of its own, so replies reach it; -v names it with pid and uid."""
    path = tmp_path / "d.sock"
    listen = spawn.portd("listen", "-v", "-uU", str(path), stdin=subprocess.PIPE)
    listen.expect(f"^listening on unix:{path} \\(datagram\\)$")
    nc = spawn(require_tool("nc"), "-uU", str(path), stdin=subprocess.PIPE)
    nc.write(b"from nc\n")
    assert listen.expect_output(8) == b"from nc\n"
    sender = listen.expect(f"^datagram from pid {nc.proc.pid} uid {UID} \\((/\\S+)\\)$").group(1)
    listen.write(b"from portd\n")
    assert nc.expect_output(11) == b"from portd\n"
    nc.write(b"again\n")
    assert listen.expect_output(14) == b"from nc\nagain\n"
    listen.interrupt()
    assert listen.wait() == 130
    assert listen.lines[1:] == [f"datagram from pid {nc.proc.pid} uid {UID} ({sender})"]
    assert not path.exists()


def test_listen_answers_socat_sendto_with_a_bound_path(spawn: Spawner, tmp_path: Path) -> None:
    path, client = tmp_path / "d.sock", tmp_path / "client.sock"
    listen = spawn.portd("listen", "unix:" + str(path), "-u", stdin=subprocess.PIPE)
    listen.expect("^listening on unix:")
    socat = spawn(
        require_tool("socat"), "-", f"UNIX-SENDTO:{path},bind={client}", stdin=subprocess.PIPE
    )
    socat.write(b"question\n")
    assert listen.expect_output(9) == b"question\n"
    listen.write(b"answer\n")
    assert socat.expect_output(7) == b"answer\n"
    listen.interrupt()
    assert listen.wait() == 130


def test_a_sender_without_a_path_is_heard_not_answered(spawn: Spawner, tmp_path: Path) -> None:
    """Its datagrams reach stdout; one line says why no reply can reach it; stdin waits for
    a sender that can be answered."""
    path = tmp_path / "d.sock"
    listen = spawn.portd("listen", "-uU", str(path), stdin=subprocess.PIPE)
    listen.expect("^listening on unix:")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound:
        unbound.sendto(b"1", str(path))
        unbound.sendto(b"2", str(path))
    assert listen.expect_output(2) == b"12"
    listen.write(b"for a sender that can hear it\n")
    with datagram_server(tmp_path / "bound.sock") as bound:
        bound.sendto(b"3", str(path))
        assert bound.recv(100) == b"for a sender that can hear it\n"
    listen.interrupt()
    assert listen.wait() == 130
    assert listen.output == b"123"
    assert listen.lines[1:] == [
        f"portd: pid {os.getpid()} uid {UID} sends from a socket without a path, so replies "
        "cannot reach it (a client must bind one: nc -uU, socat UNIX-SENDTO:PATH,bind=...)"
    ]


def test_connect_binds_its_own_path_and_removes_it(spawn: Spawner, tmp_path: Path) -> None:
    """Against socat UNIX-RECVFROM echoing one datagram: the reply reaches portd's own
    socket, in a directory of its own that is gone once portd exits."""
    path = tmp_path / "echo.sock"
    socat = spawn(require_tool("socat"), "-d", "-d", f"UNIX-RECVFROM:{path}", "PIPE")
    socat.expect("receiving on AF=1")
    connect = spawn.portd("connect", "-v", "-q", "0", "-uU", str(path), stdin=subprocess.PIPE)
    connect.write(b"ping\n")
    assert connect.expect_output(5) == b"ping\n"
    match = CLIENT_LINE.match(connect.lines[0])
    assert match is not None, connect.lines
    own = Path(match.group(2))
    assert match.group(1) == str(path)
    assert own.is_socket()
    assert (own.stat().st_mode & 0o777, own.parent.stat().st_mode & 0o777) == (0o666, 0o711)
    connect.close_stdin()
    assert connect.wait() == 0, connect.stderr
    assert socat.wait() == 0, socat.stderr
    assert not own.parent.exists()


def test_connect_exchanges_datagrams_with_nc_listening(spawn: Spawner, tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    nc = spawn(require_tool("nc"), "-luvU", str(path), stdin=subprocess.PIPE)
    nc.expect("^Bound on ")
    connect = spawn.portd("connect", f"unix:{path}", "-u", stdin=subprocess.PIPE)
    connect.write(b"from portd\n")
    assert nc.expect_output(11) == b"from portd\n"
    nc.write(b"from nc\n")
    assert connect.expect_output(8) == b"from nc\n"
    connect.interrupt()
    assert connect.wait() == 130
    assert connect.lines == []


def test_connect_binds_the_path_s_names(spawn: Spawner, tmp_path: Path) -> None:
    """nc's -s for unix datagrams: the client's own socket, removed afterwards."""
    own = tmp_path / "mine.sock"
    with datagram_server(tmp_path / "d.sock") as server:
        connect = spawn.portd(
            "connect", "-q", "0", "-s", str(own), "-uU", str(tmp_path / "d.sock"),
            stdin=subprocess.PIPE,
        )  # fmt: skip
        connect.write(b"hello")
        data, sender = server.recvfrom(100)
        assert (data, sender) == (b"hello", str(own))
        server.sendto(b"hi", sender)
        assert connect.expect_output(2) == b"hi"
        connect.close_stdin()
        assert connect.wait() == 0, connect.stderr
    assert not own.exists()


def test_a_server_running_as_another_user_can_answer(spawn: Spawner) -> None:
    """A daemon that dropped root answers portd connect -uU: the client's socket is opened
    to others once connected (then the kernel lets only the server send to it)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run a server as nobody")
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="portd-test-"))
    try:
        shared.chmod(0o777)  # nobody binds its socket here
        path = shared / "nobody.sock"
        echo = (
            "import socket, sys; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
            f"s.bind({str(path)!r}); print('bound', flush=True); d, a = s.recvfrom(100); "
            "s.sendto(d.upper(), a)"
        )
        nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        server = spawn(*nobody, sys.executable, "-c", echo)
        assert server.expect_output(6) == b"bound\n"
        connect = spawn(*PORTD, "connect", "-q", "0", "-uU", str(path), stdin=subprocess.PIPE)
        connect.write(b"answer me")
        assert connect.expect_output(9) == b"ANSWER ME"
        connect.close_stdin()
        assert connect.wait() == 0, connect.stderr
        assert server.wait() == 0, server.stderr
    finally:
        shutil.rmtree(shared)
