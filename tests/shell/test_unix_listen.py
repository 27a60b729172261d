"""`portd listen -U PATH` and `portd listen unix:PATH` as real processes: files byte-exact
against nc -U and socat UNIX-CONNECT, the peer's pid and uid with -v, relative paths,
--port-file, -k limits by uid, handlers, and the socket file removed however it ends.

Readiness is the ``listening on unix:PATH`` line: portd prints it once the socket listens.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.processes import Process, Spawner, read_to_eof, write_payload
from tests.support import require_tool

SIZES = pytest.mark.parametrize("size", [0, 1 << 20], ids=["empty", "1MiB"])
UID = os.getuid()


def listening(process: Process, where: str, label: str = "stream") -> None:
    """Wait for portd's ready line naming ``where`` (a path as given, or @name)."""
    process.expect(f"^listening on unix:{where} \\({label}\\)$")


def unix_client(path: Path | str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def sending(tool: str, path: Path, payload: Path) -> list[str]:
    """``tool`` connecting to the socket at ``path``, sending the file, ending its side."""
    if tool == "nc":
        return [require_tool("nc"), "-NU", str(path)]  # stdin is the file
    return [require_tool("socat"), "-u", f"FILE:{payload}", f"UNIX-CONNECT:{path}"]


def receiving(tool: str, path: Path, saved: Path) -> list[str]:
    """``tool`` connecting to the socket at ``path``, saving what it receives."""
    if tool == "nc":
        return [require_tool("nc"), "-dU", str(path)]  # stdout is the file
    return [require_tool("socat"), "-u", f"UNIX-CONNECT:{path}", f"CREATE:{saved}"]


@SIZES
@pytest.mark.parametrize("tool", ["nc", "socat"])
@pytest.mark.parametrize("form", ["-U", "unix:"])
def test_receives_a_file_byte_exact(
    spawn: Spawner, tmp_path: Path, tool: str, size: int, form: str
) -> None:
    """Both spellings; the socket file is gone once portd stopped listening."""
    payload = write_payload(tmp_path / "payload", size)
    path, received = tmp_path / "s.sock", tmp_path / "received"
    where = ["-U", str(path)] if form == "-U" else [f"unix:{path}"]
    listen = spawn.portd("listen", *where, stdout=received)
    listening(listen, str(path))
    peer = spawn(*sending(tool, path, tmp_path / "payload"), stdin=tmp_path / "payload")
    assert peer.wait() == 0, peer.stderr
    assert listen.wait() == 0, listen.stderr
    assert received.read_bytes() == payload
    assert listen.lines == [f"listening on unix:{path} (stream)"]
    assert not path.exists()


@SIZES
@pytest.mark.parametrize("tool", ["nc", "socat"])
def test_serves_stdin_byte_exact(spawn: Spawner, tmp_path: Path, tool: str, size: int) -> None:
    payload = write_payload(tmp_path / "payload", size)
    path, saved = tmp_path / "s.sock", tmp_path / "saved"
    listen = spawn.portd("listen", "-U", str(path), stdin=tmp_path / "payload")
    listening(listen, str(path))
    peer = spawn(*receiving(tool, path, saved), stdout=saved if tool == "nc" else None)
    assert peer.wait() == 0, peer.stderr
    assert listen.wait() == 0, listen.stderr
    assert saved.read_bytes() == payload


def test_verbose_names_the_peer_by_pid_and_uid(spawn: Spawner, tmp_path: Path) -> None:
    """-v: the typed peer (SO_PEERCRED), in the same words as the daemon's logs."""
    path = tmp_path / "s.sock"
    listen = spawn.portd("listen", "-v", "-U", str(path), stdin=subprocess.PIPE)
    listening(listen, str(path))
    nc = spawn(require_tool("nc"), "-U", str(path), stdin=subprocess.PIPE)
    listen.expect(f"^connection from pid {nc.proc.pid} uid {UID}$")
    nc.write(b"hi\n")
    assert listen.expect_output(3) == b"hi\n"
    nc.close_stdin()
    listen.close_stdin()
    assert listen.wait() == 0, listen.stderr
    assert nc.wait() == 0
    assert listen.lines[-1] == f"connection from pid {nc.proc.pid} uid {UID} closed"


def test_a_relative_path_is_the_working_directorys(spawn: Spawner, tmp_path: Path) -> None:
    """As nc -lU: relative to where portd runs; --port-file says where that is."""
    listen = spawn.portd(
        "listen", "--port-file", "where", "-U", "rel.sock", cwd=tmp_path, stdin=subprocess.PIPE
    )
    listening(listen, "rel.sock")
    assert (tmp_path / "where").read_text(encoding="utf-8") == f"{tmp_path / 'rel.sock'}\n"
    with unix_client(tmp_path / "rel.sock") as client:
        client.sendall(b"relative")
        listen.close_stdin()
        assert read_to_eof(client) == b""
    assert listen.wait() == 0
    assert listen.output == b"relative"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["where"]


def test_an_abstract_name_works_and_is_the_port_file(spawn: Spawner, tmp_path: Path) -> None:
    name = f"@portd-test-{os.getpid()}-{tmp_path.name}"
    port_file = tmp_path / "where"
    listen = spawn.portd("listen", "--port-file", str(port_file), f"unix:{name}")
    listening(listen, name)
    assert port_file.read_text(encoding="utf-8") == f"{name}\n"
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect("\0" + name[1:])
        client.sendall(b"abstract")
    assert listen.wait() == 0
    assert listen.output == b"abstract"


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("flags", [[], ["-k"], ["-u"], ["-k", "--echo"]], ids=str)
def test_the_socket_file_is_removed_when_interrupted(
    spawn: Spawner, tmp_path: Path, how: str, flags: list[str]
) -> None:
    """Ctrl-C (130) and SIGTERM (143) end portd with its cleanup: no stale file left,
    also while threads of its own still wait on the socket (-k, -u)."""
    path = tmp_path / "s.sock"
    listen = spawn.portd("listen", *flags, "-U", str(path))
    listening(listen, str(path), "datagram" if "-u" in flags else "stream")
    assert path.is_socket()
    listen.proc.send_signal(getattr(signal, how))
    assert listen.wait() == 128 + getattr(signal, how)
    assert not path.exists()


def test_a_stale_socket_is_replaced_and_anything_else_is_left(
    spawn: Spawner, tmp_path: Path
) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # bound, closed: a file nobody accepts on
    listen = spawn.portd("listen", "-U", str(path))
    listening(listen, str(path))
    with unix_client(path) as client:
        client.sendall(b"x")
    assert listen.wait() == 0
    path.write_bytes(b"not a socket")
    refused = spawn.portd("listen", "-U", str(path))
    assert refused.wait() == 69
    assert refused.lines == [
        f"portd: listen unix:{path}: {path} exists and is not a socket; "
        "portd removes only stale sockets"
    ]
    assert path.read_bytes() == b"not a socket"


def test_a_live_socket_is_in_use_by_its_holder(spawn: Spawner, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as holder:
        holder.bind(str(path))
        holder.listen()
        listen = spawn.portd("listen", "-U", str(path))
        assert listen.wait() == 69
    assert listen.lines == [f"portd: listen unix:{path}: {path} is in use by pid {os.getpid()}"]
    assert path.is_socket()  # the holder's, untouched


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["-U"], "portd: -U takes one PATH (the socket file, or @NAME)"),
        (["-U", "a", "b"], "portd: -U takes one PATH (the socket file, or @NAME), got 'a b'"),
        (["-U", "-p", "5", "x.sock"],
         "portd: -U listens on a PATH; -p and -s name IP ports and addresses"),
        (["-4", "-U", "x.sock"],
         "portd: unix:x.sock: -4/-6 apply to IP addresses, not unix sockets"),
        (["-k", "--set", "allow=127.0.0.1", "-U", "x.sock"],
         "portd: --set allow: applies to inet sockets only"),
        (["-k", "--set", "allow_uids=[0]", "127.0.0.1:0"],
         "portd: --set allow_uids: applies to unix sockets only"),
        (["-U", "a\tb"], "portd: bad unix socket path 'a\\tb'; it holds a control character"),
    ],
    ids=["no-path", "two-paths", "port", "family", "ip-rule", "uid-rule-on-ip", "control"],
)  # fmt: skip
def test_refusals_are_one_line_and_64(
    spawn: Spawner, tmp_path: Path, args: list[str], line: str
) -> None:
    listen = spawn.portd("listen", *args, cwd=tmp_path)
    assert listen.wait() == 64
    assert listen.lines[-1] == line
    assert list(tmp_path.iterdir()) == []


def test_numeric_only_has_no_host_to_refuse(spawn: Spawner, tmp_path: Path) -> None:
    """-n (nc -lnU habits) changes nothing for a path; it used to refuse 'unix' as a name."""
    path = tmp_path / "s.sock"
    listen = spawn.portd("listen", "-lnvU", str(path))
    listening(listen, str(path))
    with unix_client(path) as client:
        client.sendall(b"n")
    assert listen.wait() == 0
    assert listen.output == b"n"


def test_keep_serves_clients_by_uid_rules(spawn: Spawner, tmp_path: Path) -> None:
    """-k --set allow_uids: SO_PEERCRED decides; a refused client reads EOF and a line says
    who and why."""
    path = tmp_path / "s.sock"
    listen = spawn.portd(
        "listen", "-k", "--set", f"allow_uids=[{UID + 1}]", "-U", str(path), stdin=subprocess.PIPE
    )
    listening(listen, str(path))
    with unix_client(path) as refused:
        assert read_to_eof(refused) == b""
    listen.expect(f"^portd: refused pid {os.getpid()} uid {UID}: denied$")
    listen.interrupt()
    assert listen.wait() == 130
    allowed = spawn.portd(
        "listen", "-k", "--set", f"allow_uids=[{UID}]", "-U", str(path), stdin=subprocess.PIPE
    )
    listening(allowed, str(path))
    with unix_client(path) as first, unix_client(path) as second:
        first.sendall(b"1")
        allowed.expect_output(1)
        second.sendall(b"2")
        assert allowed.expect_output(2) == b"12"
        allowed.write(b"to both\n")
        assert first.recv(8) == second.recv(8) == b"to both\n"
    allowed.interrupt()
    assert allowed.wait() == 130
    assert not path.exists()


def test_a_handler_serves_a_relative_path(spawn: Spawner, tmp_path: Path) -> None:
    """--echo with -U: the config's absolute-path rule does not apply to the shell."""
    nc = require_tool("nc")
    listen = spawn.portd("listen", "--echo", "-U", "e.sock", cwd=tmp_path)
    listening(listen, str(tmp_path / "e.sock"))
    client = spawn(nc, "-NU", str(tmp_path / "e.sock"), stdin=subprocess.PIPE)
    client.write(b"echo me\n")
    client.close_stdin()
    assert client.wait() == 0, client.stderr
    assert client.output == b"echo me\n"
    assert listen.wait() == 0, listen.stderr
    assert list(tmp_path.iterdir()) == []
