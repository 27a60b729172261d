"""systemd integration: sd_notify on a test-owned NOTIFY_SOCKET, and socket activation
through the real systemd-socket-activate (sockets the test bound on port 0 are passed
through it, so no port number is ever guessed)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from portd.handlers.echo import EchoHandler
from portd.systemd import InheritedSocket, Notifier, match_inherited, take_inherited_sockets
from tests.support import Daemon, listener_config, require_tool

StartDaemon = Callable[..., Daemon]


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(15)

    def next(self) -> dict[str, str]:
        """The next message as KEY -> VALUE."""
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def until(self, key: str) -> dict[str, str]:
        """Skip messages until one carries ``key``."""
        while True:
            message = self.next()
            if key in message:
                return message


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify")
    yield listener
    listener.sock.close()


def echo_config(name: str = "echo", bind: str = "127.0.0.1:0", protocol: str = "tcp") -> str:
    return textwrap.dedent(f"""
        [[listener]]
        name = "{name}"
        bind = "{bind}"
        protocol = "{protocol}"
        handler = "echo"
    """)


def roundtrip(port: int, data: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(len(data))


def test_ready_only_once_listeners_serve_then_reloading_then_stopping(
    start_daemon: StartDaemon, notify: NotifySocket
) -> None:
    daemon = start_daemon(echo_config(), env={**os.environ, "NOTIFY_SOCKET": str(notify.path)})
    ready = notify.next()
    ready_at = datetime.now(UTC)
    assert ready["READY"] == "1"
    started = daemon.wait_for("listener_started")  # logged before READY=1 was sent
    assert datetime.fromisoformat(started["timestamp"]) <= ready_at
    port = started["port"]
    assert roundtrip(port) == b"ping"  # serving by the time systemd heard READY=1
    assert ready["STATUS"] == f"serving 1 listeners: echo tcp 127.0.0.1:{port}"

    daemon.signal(signal.SIGHUP)
    reloading = notify.next()
    assert reloading["RELOADING"] == "1"
    assert int(reloading["MONOTONIC_USEC"]) > 0
    assert notify.next()["READY"] == "1"

    daemon.signal(signal.SIGTERM)
    assert notify.next()["STOPPING"] == "1"
    assert daemon.wait() == 0


def test_watchdog_is_fed_at_half_the_interval(
    start_daemon: StartDaemon, notify: NotifySocket
) -> None:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "200000"}
    start_daemon(echo_config(), env=env)
    notify.until("READY")
    for _ in range(3):
        assert notify.until("WATCHDOG") == {"WATCHDOG": "1"}


def test_abstract_notify_socket_is_reached(start_daemon: StartDaemon) -> None:
    name = f"portd-test-{os.getpid()}-{threading.get_ident()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(15)
        start_daemon(echo_config(), env={**os.environ, "NOTIFY_SOCKET": "@" + name})
        assert b"READY=1" in sock.recv(4096).split(b"\n")


def test_inherited_sockets_are_taken_only_when_meant_for_this_process() -> None:
    environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    assert take_inherited_sockets(environ) == []
    assert environ == {}, "the variables must be unset so children never see them"


def test_matching_prefers_names_then_addresses() -> None:
    with socket.socket() as named, socket.socket() as by_address, socket.socket() as stray:
        for sock in (named, by_address, stray):
            sock.bind(("127.0.0.1", 0))
        port = by_address.getsockname()[1]
        web = listener_config(EchoHandler, name="web", bind="127.0.0.1:0")
        api = listener_config(EchoHandler, name="api", bind=f"127.0.0.1:{port}", index=2)
        inherited = [
            InheritedSocket("web", named),
            InheritedSocket("unknown", by_address),
            InheritedSocket("other", stray),
        ]
        assert match_inherited([web, api], inherited) == {"web": [named], "api": [by_address]}


def test_notifier_is_silent_without_a_service_manager() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready("x")  # must not raise
    assert notifier.watchdog_interval_s is None


SHIM = """
import os, sys
count = int(sys.argv[1])
for index, fd in enumerate(sys.argv[2 : 2 + count]):
    os.dup2(int(fd), 3 + index)
os.environ["LISTEN_FDS"] = str(count)
os.environ["LISTEN_PID"] = str(os.getpid())  # exec keeps the pid
os.execvp(sys.argv[2 + count], sys.argv[2 + count :])
"""


class Activator:
    """systemd-socket-activate passing through sockets this test bound itself.

    A small shim puts the sockets at fds 3.. with LISTEN_FDS/LISTEN_PID, then execs the
    tool, which announces them and execs portd on the first connection.
    """

    def __init__(
        self, sockets: list[socket.socket], names: list[str], datagram: bool = False
    ) -> None:
        self.sockets = sockets
        self.names = names
        self.datagram = datagram

    def prefix(self) -> list[str]:
        tool = require_tool("systemd-socket-activate")
        fds = [str(sock.fileno()) for sock in self.sockets]
        flags = ["--datagram"] if self.datagram else []
        # systemd-socket-activate passes on only what -E names: the test run's runtime
        # directory keeps the daemon's control socket out of the host's /tmp.
        flags += ["-E", "XDG_RUNTIME_DIR"] if "XDG_RUNTIME_DIR" in os.environ else []
        shim = [sys.executable, "-c", SHIM, str(len(fds)), *fds]
        return [*shim, tool, *flags, f"--fdname={':'.join(self.names)}", "--"]

    def popen(self) -> dict[str, object]:
        return {"pass_fds": [sock.fileno() for sock in self.sockets]}


def listening(port: int = 0, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    return sock


def test_socket_activation_by_name_through_systemd_socket_activate(
    start_daemon: StartDaemon,
) -> None:
    with listening() as sock:
        port = sock.getsockname()[1]
        activator = Activator([sock], ["web"])
        daemon = start_daemon(
            echo_config("web", bind="127.0.0.1:0"), prefix=activator.prefix(), **activator.popen()
        )
        # The tool starts portd on the first connection, which waits in the backlog.
        assert roundtrip(port, b"activated") == b"activated"
        started = daemon.wait_for("listener_started")
        assert (started["origin"], started["port"]) == ("inherited", port)


def test_socket_activation_by_address_for_udp(start_daemon: StartDaemon) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        activator = Activator([sock], ["not-a-listener-name"], datagram=True)
        daemon = start_daemon(
            echo_config("u", bind=f"127.0.0.1:{port}", protocol="udp"),
            prefix=activator.prefix(),
            **activator.popen(),
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(10)
            client.sendto(b"datagram", ("127.0.0.1", port))
            assert client.recv(64) == b"datagram"
        assert daemon.wait_for("listener_started")["origin"] == "inherited"


def test_activation_only_names_the_listeners_without_a_socket(start_daemon: StartDaemon) -> None:
    with listening() as sock:
        port = sock.getsockname()[1]
        activator = Activator([sock], ["web"])
        config = echo_config("web") + echo_config("extra", bind="127.0.0.1:0")
        daemon = start_daemon(
            config, "--activation-only", prefix=activator.prefix(), **activator.popen()
        )
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            assert daemon.wait(timeout=15) == 78
    assert daemon.lines[-1] == (
        'portd: listener "extra": no socket was passed for it (--activation-only); give its '
        "socket unit FileDescriptorName=extra or ListenStream= its address"
    )


def _privileged_socket() -> socket.socket:
    """A port below 1024 on loopback, bound (and held) by the test."""
    for port in range(1023, 500, -1):
        try:
            return listening(port)
        except OSError:
            continue
    pytest.skip("no free port below 1024 on 127.0.0.1")


@pytest.mark.skipif(os.geteuid() != 0, reason="binding below 1024 and switching users needs root")
def test_activated_listener_serves_a_privileged_port_as_an_unprivileged_user(
    public_dir: Path,
) -> None:
    setpriv = require_tool("setpriv")
    config = public_dir
    (config / "portd.toml").write_text(echo_config("low"))
    with _privileged_socket() as sock:
        port = sock.getsockname()[1]
        activator = Activator([sock], ["low"])
        drop = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
        daemon = Daemon(
            ["-c", str(config / "portd.toml")],
            prefix=[*activator.prefix(), *drop],
            **activator.popen(),
        )
        try:
            assert roundtrip(port, b"low port") == b"low port"
            status = psutil.Process(daemon.proc.pid)
            assert status.uids() == (65534, 65534, 65534)
            assert daemon.wait_for("listener_started")["port"] == port < 1024
        finally:
            daemon.stop()
