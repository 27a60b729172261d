"""Starting, probing and stopping the servers under test: portd, socat and the reference.

Each serves TCP or UDP on 127.0.0.1 port 0, or (``family="unix"``) a unix stream socket
at a path in the run's working directory. A server is ready when an echo round trip
through it succeeds; nothing here sleeps
for readiness, it only retries a probe until it works, the process dies, or time runs
out. Each runs in its own process group (see processes.py), stopped as a whole.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import psutil
from processes import STOP_TIMEOUT_S, LogTail, nofile_limit, read_line, spawn, stop_group

__all__ = [
    "HERE",
    "HOST",
    "READY_TIMEOUT_S",
    "Server",
    "ServerError",
    "ServerSpec",
    "launch",
    "portd_argv",
    "socat_argv",
    "spawn",  # from processes.py, kept importable here for benchmark modules
    "start_server",
    "wait_until_echoes",
]

Transport = Literal["tcp", "udp"]
Family = Literal["inet", "unix"]
T = TypeVar("T")

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
REFERENCE_SCRIPT = HERE / "reference_echo.py"
READY_TIMEOUT_S = 20.0
PROBE_INTERVAL_S = 0.01
PROBE_TIMEOUT_S = 1.0
PROBE = b"ping"
SOCAT_BACKLOG = 1024  # socat's default (5) would drop SYNs that portd's 1024 keeps


class ServerError(Exception):
    """A server did not start, or died; the message carries the tail of its log."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """What to start: which program, serving which transport, logging how much."""

    name: str
    program: Literal["portd", "socat", "reference"]
    transport: Transport = "tcp"
    log_level: str = "warning"
    many_files: bool = False  # RLIMIT_NOFILE and portd's max_connections raised (10,000)
    socat_echo: tuple[str, ...] = ("PIPE",)  # socat's options and its second address
    family: Family = "inet"  # unix: a stream socket at a path (transport tcp)
    tree: str = ""  # portd only: run the portd package in this directory (--baseline)
    adopt: bool = False  # reference only: accept and adopt as portd does (reference-adopt)


class Server:
    """A running server process and the port (or unix socket path) it serves."""

    def __init__(self, spec: ServerSpec, proc: subprocess.Popen[bytes], log: LogTail) -> None:
        self.spec = spec
        self.proc = proc
        self.log = log
        self.port = 0
        self.path = ""  # a unix socket's, for family "unix"

    @property
    def target(self) -> list[str]:
        """How clients.py is told where to connect: ``--port N`` or ``--unix PATH``."""
        return ["--unix", self.path] if self.path else ["--port", str(self.port)]

    @property
    def where(self) -> str:
        """The port or path, for messages."""
        return self.path or f"port {self.port}"

    @property
    def name(self) -> str:
        """The spec's name (``portd``, ``socat``, ...)."""
        return self.spec.name

    def check_alive(self) -> None:
        """Raise ServerError if the process has exited."""
        if self.proc.poll() is not None:
            self.log.join(STOP_TIMEOUT_S)  # let the last lines arrive
            raise ServerError(
                f"{self.name} exited with {self.proc.returncode}; its log ends:\n{self.log.text()}"
            )

    def rss_kib(self) -> int:
        """VmRSS of the server's main process, from /proc/PID/status."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text(encoding="ascii")
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise ServerError(f"no VmRSS in /proc/{self.proc.pid}/status")

    def cpu_s(self) -> float:
        """CPU seconds used by the server and everything it forked, live or reaped."""
        try:
            tree = [psutil.Process(self.proc.pid)]
            tree += tree[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for process in tree:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:  # a child that ended just now
                continue
            total += times.user + times.system + times.children_user + times.children_system
        return total

    def stop(self) -> None:
        """Stop the process and everything it forked; collect the rest of its log."""
        stop_group(self.proc)
        self.log.join(STOP_TIMEOUT_S)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def launch(
    spec: ServerSpec, argv: Sequence[str], markers: Sequence[bytes] = (), **popen: Any
) -> Server:
    """Start ``argv`` in a new session with stderr drained. The caller stops the Server."""
    if spec.many_files:
        limit = nofile_limit()
        argv = ["prlimit", f"--nofile={limit}:{limit}", "--", *argv]
    if spec.tree:
        # `python -m portd` imports from its working directory first: run it in the tree.
        popen = {"cwd": spec.tree, "env": {**os.environ, "PYTHONPATH": spec.tree}, **popen}
    proc = spawn(
        argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, **popen
    )
    assert proc.stderr is not None
    return Server(spec, proc, LogTail(proc.stderr, markers))


def portd_argv(config: Path, log_level: str) -> list[str]:
    """The command line that serves ``config`` with JSON logs at ``log_level``."""
    return [
        sys.executable,
        "-m",
        "portd",
        "serve",
        "-c",
        str(config),
        "--log-format",
        "json",
        "--log-level",
        log_level,
    ]


def write_echo_config(path: Path, spec: ServerSpec) -> Path:
    """A one-listener echo config on 127.0.0.1 port 0 (unix: at ``socket_path(path)``);
    returns ``path``."""
    bind = f"unix:{socket_path(path)}" if spec.family == "unix" else f"{HOST}:0"
    lines = [
        "[daemon]",
        'log_level = "warning"',
        "shutdown_timeout_s = 1",
        "",
        "[[listener]]",
        'name = "echo"',
        f'bind = "{bind}"',
        f'protocol = "{spec.transport}"',
        'handler = "echo"',
    ]
    if spec.many_files:
        # portd serves at most 1,024 connections per listener unless told otherwise.
        lines.append(f"max_connections = {nofile_limit()}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def socket_path(config: Path) -> Path:
    """The unix socket a server started with ``config`` (or named so) serves."""
    return config.with_suffix(".sock")


def start_server(spec: ServerSpec, workdir: Path) -> Server:
    """Start the server ``spec`` describes and return it once an echo went through it.

    Raises:
        ServerError: it did not come up within READY_TIMEOUT_S (it is stopped first).
    """
    unix = spec.family == "unix"
    name = workdir / f"{spec.name}-{spec.transport}{'-unix' if unix else ''}.toml"
    path = socket_path(name)
    if spec.program == "socat":
        return _start_socat(spec, path)
    finish: Callable[[Server], None]
    if spec.program == "portd":
        config = write_echo_config(name, spec)
        server = launch(spec, portd_argv(config, spec.log_level), stdout=subprocess.DEVNULL)
        finish = _no_port if unix else _find_portd_port
    else:
        where = ["unix", "--path", str(path)] if unix else [spec.transport]
        argv = [sys.executable, str(REFERENCE_SCRIPT), *where, *(["--adopt"] * spec.adopt)]
        server = launch(spec, argv, stdout=subprocess.PIPE)
        finish = _read_reference_port
    server.path = str(path) if unix else ""
    try:
        finish(server)
        wait_until_echoes(server)
    except BaseException:
        server.stop()
        raise
    return server


def _no_port(server: Server) -> None:
    """A unix socket's path is known before the start: the echo probe says when it serves."""


def _find_portd_port(server: Server) -> None:
    """The kernel chose portd's port; read it from the process's own socket table.

    At log level warning portd prints no ``listener_started`` line, so the bound port
    comes from /proc (via psutil) instead of the log.
    """
    kind = "tcp4" if server.spec.transport == "tcp" else "udp4"

    def bound_port() -> int | None:
        server.check_alive()
        try:
            conns = psutil.Process(server.proc.pid).net_connections(kind=kind)
        except psutil.Error:  # mid-exec or just exited: check_alive decides next time
            return None
        for conn in conns:
            if conn.laddr and (kind == "udp4" or conn.status == psutil.CONN_LISTEN):
                return int(conn.laddr.port)
        return None

    server.port = retry_until(bound_port, READY_TIMEOUT_S, f"{server.name} to bind")


def _read_reference_port(server: Server) -> None:
    """reference_echo.py prints ``{"event": "listening", "port": N}`` once it serves."""
    assert server.proc.stdout is not None
    line = read_line(server.proc.stdout, READY_TIMEOUT_S)
    if not line:
        server.check_alive()
        raise ServerError(f"{server.name} printed no port within {READY_TIMEOUT_S:.0f}s")
    event = json.loads(line)
    if "path" in event:
        server.path = str(event["path"])
    else:
        server.port = int(event["port"])


def socat_argv(spec: ServerSpec, port: int | str) -> list[str]:
    """The socat command line ``spec`` runs: its listening address (``port`` is a path
    for a unix socket), then ``socat_echo``."""
    *options, echo = spec.socat_echo
    if spec.family == "unix":
        listen = f"UNIX-LISTEN:{port},fork,backlog={SOCAT_BACKLOG}"
    elif spec.transport == "tcp":
        listen = f"TCP-LISTEN:{port},bind={HOST},reuseaddr,fork,backlog={SOCAT_BACKLOG}"
    else:
        listen = f"UDP-LISTEN:{port},bind={HOST},reuseaddr,fork"
    return ["socat", *options, listen, echo]


def _start_socat(spec: ServerSpec, path: Path) -> Server:
    if spec.family == "unix":
        server = launch(spec, socat_argv(spec, str(path)), stdout=subprocess.DEVNULL)
        server.path = str(path)
        try:
            wait_until_echoes(server)
        except BaseException:
            server.stop()
            raise
        return server
    if spec.transport == "tcp":
        # Hold the number: a bound (not listening) SO_REUSEADDR socket keeps every other
        # bind() off the port, yet lets socat (reuseaddr too) bind and listen on it.
        reservation = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    else:
        reservation = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with reservation:
        reservation.bind((HOST, 0))
        port = reservation.getsockname()[1]
        if spec.transport == "udp":
            # A UDP reservation would share the port with socat and steal datagrams, so
            # the number is freed first: another process could take it in that instant
            # (socat would then fail to bind, and start_server reports it).
            reservation.close()
        server = launch(spec, socat_argv(spec, port), stdout=subprocess.DEVNULL)
        server.port = port
        try:
            wait_until_echoes(server)
        except BaseException:
            server.stop()
            raise
    return server


def wait_until_echoes(server: Server) -> None:
    """Retry one echo round trip through ``server`` until it succeeds.

    Raises:
        ServerError: the server exited or READY_TIMEOUT_S passed.
    """

    def echoed() -> bool | None:
        server.check_alive()
        try:
            if server.path:
                _probe_unix(server.path)
            elif server.spec.transport == "tcp":
                _probe_tcp(server.port)
            else:
                _probe_udp(server.port)
        except OSError:
            return None
        return True

    retry_until(echoed, READY_TIMEOUT_S, f"{server.name} to echo on {server.where}")


def _probe_tcp(port: int) -> None:
    with socket.create_connection((HOST, port), timeout=PROBE_TIMEOUT_S) as sock:
        _echo_probe(sock)


def _probe_unix(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(PROBE_TIMEOUT_S)
        sock.connect(path)
        _echo_probe(sock)


def _echo_probe(sock: socket.socket) -> None:
    sock.sendall(PROBE)
    received = b""
    while len(received) < len(PROBE):
        chunk = sock.recv(len(PROBE))
        if not chunk:
            raise ConnectionError("closed before echoing")
        received += chunk


def _probe_udp(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(PROBE_INTERVAL_S * 5)
        sock.connect((HOST, port))
        sock.send(PROBE)
        sock.recv(len(PROBE))


def retry_until(attempt: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Call ``attempt`` every PROBE_INTERVAL_S until it returns a value.

    This polls a condition (a port in the socket table, an echo that succeeds); the
    pause between attempts only spaces out the polls.

    Raises:
        ServerError: nothing within ``timeout_s``, or ``attempt`` raised it.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = attempt()
        if result is not None:
            return result
        time.sleep(PROBE_INTERVAL_S)
    raise ServerError(f"timed out after {timeout_s:.0f}s waiting for {what}")
