"""Unix-socket listeners everywhere a TCP/UDP one works: the testing API, the daemon with
the tools users drive them with (socat, nc -U, curl --unix-socket), credentials rules,
the socket file's life, reloads, socket activation and generated units."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from portd.testing import serve
from tests.support import Daemon, require_tool, run_portd, write_config

NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]


def unix_roundtrip(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def listener(name: str, bind: str, handler: str = "echo", extra: str = "") -> str:
    return f'[[listener]]\nname = "{name}"\nbind = "{bind}"\nhandler = "{handler}"\n{extra}'


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_test_server_on_a_unix_socket_echoes_and_records_the_peer(
    tmp_path: Path, loop: str
) -> None:
    path = str(tmp_path / "echo.sock")
    with serve("echo", bind=f"unix:{path}", loop=loop, check_leaks=True) as server:
        assert server.path == path
        assert server.address == path
        assert unix_roundtrip(server.address, b"over unix") == b"over unix"
        (record,) = server.wait_connections(1)
    assert record.peer == f"pid {os.getpid()} uid {os.getuid()}"
    assert (record.bytes_in, record.bytes_out, record.how_it_ended) == (9, 9, "closed")
    assert not Path(path).exists()  # removed with the server
    with pytest.raises(ValueError, match=r"listens on a unix socket and has no port: use \.path"):
        _ = server.port


def test_a_test_server_on_a_unix_datagram_socket_answers_a_bound_client(tmp_path: Path) -> None:
    path, client_path = str(tmp_path / "d.sock"), str(tmp_path / "client.sock")
    with (
        serve("echo", bind=f"unix:{path}", protocol="udp") as server,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client,
    ):
        client.bind(client_path)
        client.settimeout(10)
        client.sendto(b"ping", server.address)
        assert client.recv(16) == b"ping"
        (record,) = server.wait_datagrams(1)
    assert record.peer == f"pid {os.getpid()} uid {os.getuid()} ({client_path})"


def test_an_abstract_test_server_needs_no_file() -> None:
    name = f"@portd-test-{os.getpid()}-echo"
    with serve("echo", bind=f"unix:{name}") as server:
        assert server.path == name
        assert unix_roundtrip(server.address, b"abstract") == b"abstract"


def test_allow_uids_lets_in_root_and_refuses_another_user(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to connect as another user")
    tmp_path.chmod(0o755)
    path = str(tmp_path / "s")
    with serve("echo", bind=f"unix:{path}", allow_uids=[0], socket_mode="0666") as server:
        assert unix_roundtrip(path, b"root") == b"root"
        code = (
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n"
            "s.sendall(b'x')\nprint(repr(s.recv(4)))"
        )
        other = subprocess.run(
            [setpriv, *NOBODY, sys.executable, "-c", code, path],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert other.stdout.strip() in ("b''", "") or "ConnectionResetError" in other.stderr
        records = server.wait_connections(1)
    assert [r.bytes_in for r in records] == [4]  # only root's connection was served


def test_unix_keys_on_an_ip_listener_and_ip_rules_on_a_unix_one_are_config_errors(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        listener("a", "127.0.0.1:0", extra='socket_mode = "0600"\n')
        + listener("b", f"unix:{tmp_path}/b.sock", extra='allow = ["10.0.0.0/8"]\n')
        + listener("c", "unix:relative.sock"),
    )
    result = run_portd("check", str(config))
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        f'portd: {config}: [[listener]] #1 "a": socket_mode = "0600": applies to unix '
        "listeners only",
        f'portd: {config}: [[listener]] #2 "b": allow = [...]: applies to inet listeners only',
        f'portd: {config}: [[listener]] #3 "c": bind = "unix:relative.sock": unix socket path '
        "'relative.sock' is relative; give an absolute path",
    ]


@pytest.fixture
def unix_daemon(tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    """A daemon with unix stream (echo, http-hello), datagram and abstract listeners."""
    name = f"@portd-test-{os.getpid()}-{tmp_path.name}"
    config = write_config(
        tmp_path,
        listener("stream", f"unix:{tmp_path}/echo.sock", extra='socket_mode = "0660"\n')
        + listener("web", f"unix:{tmp_path}/web.sock", "http-hello")
        + listener("dgram", f"unix:{tmp_path}/dgram.sock", extra='protocol = "udp"\n')
        + listener("abstract", f"unix:{name}"),
    )
    daemon = Daemon(["-c", str(config)])
    daemon.ready()
    yield daemon, tmp_path
    daemon.stop()


def test_socat_nc_and_curl_talk_to_the_daemons_unix_listeners(
    unix_daemon: tuple[Daemon, Path],
) -> None:
    daemon, directory = unix_daemon
    socat, nc, curl = require_tool("socat"), require_tool("nc"), require_tool("curl")
    echo = str(directory / "echo.sock")
    assert stat.S_IMODE(Path(echo).stat().st_mode) == 0o660
    piped = subprocess.run([socat, "-", f"UNIX-CONNECT:{echo}"], input=b"socat\n",
                           capture_output=True, timeout=30, check=True)  # fmt: skip
    assert piped.stdout == b"socat\n"
    netcat = subprocess.run([nc, "-N", "-U", echo], input=b"nc -U\n",
                            capture_output=True, timeout=30, check=True)  # fmt: skip
    assert netcat.stdout == b"nc -U\n"
    web = subprocess.run(
        [curl, "-sS", "--unix-socket", str(directory / "web.sock"), "http://portd/"],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    assert web.stdout == b"Hello from portd\n"
    name = next(e for e in daemon.events if e.get("listener") == "abstract")["bind"]
    abstract = subprocess.run(
        [socat, "-", f"ABSTRACT-CONNECT:{name.removeprefix('unix:@')}"],
        input=b"abstract\n", capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    assert abstract.stdout == b"abstract\n"
    client = directory / "client.sock"
    datagram = subprocess.run(
        [socat, "-t", "5", "-", f"UNIX-SENDTO:{directory / 'dgram.sock'},bind={client}"],
        input=b"dgram\n", capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    assert datagram.stdout == b"dgram\n"
    closed = daemon.wait_for("connection_closed", where=lambda e: e["listener"] == "stream")
    assert closed["peer"] == f"pid {closed['peer'].split()[1]} uid {os.getuid()}"


def test_the_socket_files_go_at_exit_and_only_they(unix_daemon: tuple[Daemon, Path]) -> None:
    daemon, directory = unix_daemon
    (directory / "keep.txt").write_text("mine\n")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert sorted(p.name for p in directory.iterdir()) == ["keep.txt", "portd.toml"]


def test_a_reload_hands_the_socket_over_and_removes_a_dropped_listeners_file(
    tmp_path: Path,
) -> None:
    first = listener("keep", f"unix:{tmp_path}/keep.sock") + listener(
        "gone", f"unix:{tmp_path}/gone.sock"
    )
    config = write_config(tmp_path, first)
    daemon = Daemon(["-c", str(config)])
    try:
        daemon.ready()
        inode = (tmp_path / "keep.sock").stat().st_ino
        with socket.socket(socket.AF_UNIX) as live:
            live.connect(str(tmp_path / "keep.sock"))
            live.sendall(b"before")
            assert live.recv(6) == b"before"
            config.write_text(listener("keep", f"unix:{tmp_path}/keep.sock", "recorder"))
            daemon.signal(signal.SIGHUP)
            done = daemon.wait_for("reload_complete")
            assert (done["changed"], done["removed"], done["sockets_handed_over"]) == (1, 1, 1)
            daemon.wait_for("listener_stopped", where=lambda e: e["listener"] == "gone")
            assert not (tmp_path / "gone.sock").exists()
            assert (tmp_path / "keep.sock").stat().st_ino == inode  # never closed and rebound
            live.sendall(b"after")  # the old connection still has its old handler
            assert live.recv(5) == b"after"
        assert unix_roundtrip(str(tmp_path / "keep.sock"), b"new") == b""  # the recorder
    finally:
        daemon.stop()


def test_systemd_socket_activation_passes_a_unix_socket_by_path(tmp_path: Path) -> None:
    """Adopted by path, served, and its file left for the manager that made it."""
    activate = require_tool("systemd-socket-activate")
    path = tmp_path / "activated.sock"
    config = write_config(tmp_path, listener("web", f"unix:{path}", "http-hello"))
    daemon = Daemon(
        ["-c", str(config), "--activation-only"], prefix=[activate, "-l", str(path), "--"]
    )
    try:
        daemon.wait_for("<not json>", where=lambda e: "Listening on" in e["text"])
        # The tool starts portd on the first connection, which waits in the backlog.
        curl = require_tool("curl")
        web = subprocess.run([curl, "-sS", "--unix-socket", str(path), "http://portd/"],
                             capture_output=True, timeout=30, check=True)  # fmt: skip
        assert web.stdout == b"Hello from portd\n"
        started = daemon.wait_for("listener_started")
        assert (started["origin"], started["bind"]) == ("inherited", f"unix:{path}")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
        assert path.is_socket()  # the service manager's file: portd leaves it alone
    finally:
        daemon.stop()


def test_an_inherited_unix_socket_is_never_served_as_tcp(tmp_path: Path) -> None:
    """A unix socket whose FileDescriptorName names a TCP listener is left unused."""
    activate = require_tool("systemd-socket-activate")
    path = tmp_path / "wrong.sock"
    config = write_config(tmp_path, listener("web", "127.0.0.1:0", "http-hello"))
    daemon = Daemon(
        ["-c", str(config)],
        prefix=[activate, "-l", str(path), "--fdname=web", "--"],
    )
    try:
        daemon.wait_for("<not json>", where=lambda e: "Listening on" in e["text"])
        with socket.socket(socket.AF_UNIX) as trigger:  # the tool starts portd on a connect
            trigger.connect(str(path))
            unused = daemon.wait_for("inherited_socket_unused")
            assert (unused["name"], unused["address"]) == ("web", f"unix:{path}")
        started = daemon.wait_for("listener_started")
        assert started["origin"] == "bound"
    finally:
        daemon.stop()


def test_units_write_listen_stream_with_the_socket_file_settings(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        listener("app", "unix:/run/portd/app.sock", extra='socket_mode = "0660"\nbacklog = 64\n'),
    )
    result = run_portd("units", str(config))
    assert result.returncode == 0, result.stderr
    assert (
        "[Socket]\nListenStream=/run/portd/app.sock\nSocketMode=0660\nBacklog=64\n"
        "FileDescriptorName=app\n"
    ) in result.stdout
