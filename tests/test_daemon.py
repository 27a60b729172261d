"""`portd serve` as a real process over loopback: echo, startup failures and their exit
codes, draining, signals, resource exhaustion and peers that never read."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from portd.privileges import unprivileged_port_start
from tests.conftest import needs_ipv6
from tests.support import Daemon, flood_without_reading, run_portd, write_config

StartDaemon = Callable[..., Daemon]
LOOPS = pytest.mark.parametrize("loop", ["uvloop", "asyncio"])


def config(*listeners: str, daemon: str = "") -> str:
    """A config from listener bodies (one [[listener]] each) and an optional [daemon] body."""
    parts = [f"[daemon]\n{textwrap.dedent(daemon)}"] if daemon else []
    parts += [f"[[listener]]\n{textwrap.dedent(body)}" for body in listeners]
    return "\n".join(parts)


def echo_listener(name: str, bind: str = "127.0.0.1:0", protocol: str = "tcp") -> str:
    return f'name = "{name}"\nbind = "{bind}"\nprotocol = "{protocol}"\nhandler = "echo"\n'


def tcp_roundtrip(host: str, port: int, data: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@LOOPS
def test_tcp_and_udp_echo_on_kernel_chosen_ports(start_daemon: StartDaemon, loop: str) -> None:
    daemon = start_daemon(
        config(echo_listener("t"), echo_listener("u", protocol="udp"), daemon=f'loop = "{loop}"')
    )
    ports = daemon.ready()
    payload = os.urandom(1 << 20)
    assert tcp_roundtrip("127.0.0.1", ports["t"], payload) == payload
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(10)
        for size in (0, 1, 64, 1472, 65507):
            data = os.urandom(size)
            udp.sendto(data, ("127.0.0.1", ports["u"]))
            reply, source = udp.recvfrom(70000)
            assert (reply, source) == (data, ("127.0.0.1", ports["u"]))
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    closed = [e for e in daemon.events if e["event"] == "connection_closed"]
    assert len(closed) == 1
    assert closed[0]["listener"] == "t"
    assert closed[0]["bytes_in"] == closed[0]["bytes_out"] == len(payload)
    assert {"peer", "conn_id", "duration_ms"} <= closed[0].keys()


@needs_ipv6
def test_wildcard_serves_ipv4_and_ipv6_on_one_port(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config(echo_listener("any", bind="*:0")))
    started = daemon.wait_for("listener_started")
    port = started["port"]
    assert started["addresses"] == [f"0.0.0.0:{port}", f"[::]:{port}"]
    daemon.ready()
    assert tcp_roundtrip("127.0.0.1", port, b"four") == b"four"
    assert tcp_roundtrip("::1", port, b"six") == b"six"


@needs_ipv6
def test_ipv6_loopback_listener_echoes(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config(echo_listener("v6", bind="[::1]:0")))
    port = daemon.ready()["v6"]
    assert daemon.events[0]["addresses"] == [f"[::1]:{port}"]
    assert tcp_roundtrip("::1", port, b"over v6") == b"over v6"
    listening = [
        (entry.family, entry.laddr.ip)
        for entry in psutil.Process(daemon.proc.pid).net_connections(kind="tcp")
        if entry.status == psutil.CONN_LISTEN
    ]
    assert listening == [(socket.AF_INET6, "::1")]


def test_busy_port_exits_69_naming_listener_and_holder(tmp_path: pytest.TempPathFactory) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        path = write_config(
            tmp_path,  # type: ignore[arg-type]
            config(echo_listener("free"), echo_listener("web", bind=f"127.0.0.1:{port}")),
        )
        result = run_portd("serve", "-c", str(path))
    assert result.returncode == 69
    # The kernel chose the port in the ephemeral range: serve warns about that first.
    assert [line for line in result.stderr.splitlines()
            if '"port_in_ephemeral_range"' not in line] == [
        f'portd: listener "web": 127.0.0.1:{port} (tcp) is already in use '
        f"by pid {os.getpid()} ({psutil.Process().name()})"
    ]  # fmt: skip


def test_unavailable_address_exits_69_with_one_line(tmp_path: pytest.TempPathFactory) -> None:
    """192.0.2.0/24 (TEST-NET-1) is never assigned to loopback; binding sends nothing."""
    path = write_config(tmp_path, config(echo_listener("x", bind="192.0.2.123:0")))  # type: ignore[arg-type]
    result = run_portd("serve", "-c", str(path))
    assert result.returncode == 69
    assert result.stderr.splitlines() == [
        'portd: listener "x": 192.0.2.123:0 (tcp): address not available on this host'
    ]


@pytest.mark.skipif(unprivileged_port_start() == 0, reason="every port is unprivileged here")
def test_privileged_port_without_capability_exits_77() -> None:
    """Run as nobody (through setpriv when we are root) so CAP_NET_BIND_SERVICE is absent."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as file:
        file.write(config(echo_listener("web", bind="127.0.0.1:80")))
    path = Path(file.name)
    path.chmod(0o644)  # readable by nobody
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to drop root")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "portd", "serve", "-c", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    path.unlink()
    assert result.returncode == 77, result.stderr
    start = unprivileged_port_start()
    assert result.stderr.splitlines() == [
        f'portd: listener "web": port 80 is privileged (net.ipv4.ip_unprivileged_port_start = '
        f"{start}) and this process lacks CAP_NET_BIND_SERVICE; use socket activation "
        f"(portd.socket), AmbientCapabilities=CAP_NET_BIND_SERVICE, or a port >= {start}"
    ]


@LOOPS
def test_sigterm_stops_accepting_and_lets_live_connections_finish(
    start_daemon: StartDaemon, loop: str
) -> None:
    daemon = start_daemon(config(echo_listener("e"), daemon=f'loop = "{loop}"'))
    port = daemon.ready()["e"]
    live = socket.create_connection(("127.0.0.1", port), timeout=10)
    live.sendall(b"one")
    assert live.recv(16) == b"one"
    daemon.signal(signal.SIGTERM)
    started = daemon.wait_for("shutdown_started")
    assert started["connections"] == 1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    live.sendall(b"two")
    assert live.recv(16) == b"two"
    live.close()
    assert daemon.wait() == 0
    assert daemon.wait_for("shutdown_complete")["aborted"] == 0


def test_connections_still_open_at_the_timeout_are_cut_with_an_rst_and_exit_is_0(
    start_daemon: StartDaemon,
) -> None:
    daemon = start_daemon(config(echo_listener("e"), daemon="shutdown_timeout_s = 0.5"))
    port = daemon.ready()["e"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as live:
        live.sendall(b"x")
        assert live.recv(1) == b"x"
        daemon.signal(signal.SIGTERM)
        with pytest.raises(ConnectionResetError):  # cut by the daemon once the timeout passed
            live.recv(16)
    assert daemon.wait() == 0
    assert daemon.wait_for("shutdown_complete")["aborted"] == 1


def test_a_second_signal_exits_at_once(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config(echo_listener("e"), daemon="shutdown_timeout_s = 600"))
    port = daemon.ready()["e"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as live:
        live.sendall(b"x")
        assert live.recv(1) == b"x"
        daemon.signal(signal.SIGTERM)
        daemon.wait_for("shutdown_started")
        daemon.signal(signal.SIGINT)
        assert daemon.wait(timeout=10) == 128 + signal.SIGINT, "\n".join(daemon.lines)
    assert daemon.wait_for("shutdown_complete")["aborted"] == 1


def test_sighup_reloads_an_unchanged_config_and_keeps_serving(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config(echo_listener("e")))
    port = daemon.ready()["e"]
    daemon.signal(signal.SIGHUP)
    done = daemon.wait_for("reload_complete")
    assert (done["unchanged"], done["changed"], done["added"], done["removed"]) == (1, 0, 0, 0)
    assert not [e for e in daemon.events if e["event"] == "reload_needs_restart"]
    assert tcp_roundtrip("127.0.0.1", port, b"alive") == b"alive"


def test_a_peer_that_never_reads_cannot_make_the_daemon_grow(start_daemon: StartDaemon) -> None:
    """The client sends without reading; echo must stop reading once its queue is full."""
    daemon = start_daemon(config(echo_listener("e")))
    port = daemon.ready()["e"]
    sent, rss_growth = flood_without_reading(daemon.proc.pid, port, b"x" * 65536)
    assert sent < 64 << 20, f"{sent} bytes accepted from a peer that never reads"
    assert rss_growth < 16 << 20, f"daemon grew by {rss_growth} bytes"


@LOOPS
def test_running_out_of_descriptors_backs_off_without_spinning_and_recovers(
    start_daemon: StartDaemon, loop: str
) -> None:
    daemon = start_daemon(
        config(echo_listener("e"), daemon=f'loop = "{loop}"'),
        preexec_fn=lambda: __import__("resource").setrlimit(
            __import__("resource").RLIMIT_NOFILE, (48, 48)
        ),
    )
    port = daemon.ready()["e"]
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(80)]
    try:
        daemon.wait_for("accept_failed")
        cpu = psutil.Process(daemon.proc.pid).cpu_times()
        time.sleep(1.0)  # not a readiness wait: the interval over which a spin would burn CPU
        after = psutil.Process(daemon.proc.pid).cpu_times()
        busy_s = (after.user + after.system) - (cpu.user + cpu.system)
        assert busy_s < 0.3, f"daemon used {busy_s:.2f}s of CPU in 1s while out of descriptors"
        for client in clients[:20]:
            client.close()
        for client in clients[20:]:  # each close frees a descriptor for a waiting client
            client.sendall(b"late")
            assert client.recv(16) == b"late"
            client.close()
    finally:
        for client in clients:
            client.close()


def test_refuse_from_a_config_holds_a_port_that_refuses(start_daemon: StartDaemon) -> None:
    daemon = start_daemon('[[listener]]\nname = "no"\nbind = "127.0.0.1:0"\nhandler = "refuse"\n')
    port = daemon.ready()["no"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with pytest.raises(OSError, match="Address already in use"):
            other.bind(("127.0.0.1", port))  # nobody else can take the port meanwhile


def test_the_collector_paused_through_start_up_runs_again_once_serving() -> None:
    """portd serve pauses the collector while it builds listeners; the step that marks
    serving (also in each worker) must turn it back on, or cycles would pile up."""
    import gc

    from portd.daemon import YOUNG_COLLECTION_THRESHOLD, freeze_start_up_objects

    threshold = gc.get_threshold()
    gc.disable()
    try:
        freeze_start_up_objects()
        assert gc.isenabled()
        assert gc.get_threshold()[0] == YOUNG_COLLECTION_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        gc.enable()
