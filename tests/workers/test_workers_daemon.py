"""`portd serve` with [daemon] workers, as real processes over loopback: workers serving
at once, a killed worker started again while the others serve, reloads under load,
draining, daemon-wide caps and ids, shared receive directories, and `workers = "auto"`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support import Daemon, require_tool, run_portd
from tests.test_reload import Load, config_path, reload
from tests.test_systemd import Activator, NotifySocket, listening
from tests.test_systemd import notify as notify  # a fixture  # noqa: PLC0414
from tests.workers.support import config, echo, holders, listener, listening_sockets, worker_pids

StartDaemon = Callable[..., Daemon]


def test_with_reuse_port_each_worker_has_a_socket_and_connections_spread_over_them(
    start_daemon: StartDaemon,
) -> None:
    daemon = start_daemon(config(listener("e", reuse_port=True)))
    port = daemon.ready()["e"]
    pids = worker_pids(daemon)
    assert sorted(pids) == [0, 1]
    assert len(set(pids.values())) == 2
    parent = daemon.proc.pid
    sockets = [listening_sockets(pid, port) for pid in pids.values()]
    assert len(sockets[0]) == len(sockets[1]) == 1
    assert sockets[0] != sockets[1]  # one SO_REUSEPORT socket each ...
    assert listening_sockets(parent, port) == sockets[0] | sockets[1]  # ... the parent holds both
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(32)]
    try:
        for client in clients:
            assert echo(client, b"x") == b"x"
        held = holders(pids.values(), port)
        assert sum(held.values()) == 32
        assert all(held[pid] > 0 for pid in pids.values()), held  # 2^-31 to fail by chance
    finally:
        for client in clients:
            client.close()
    closed = daemon.events_until("connection_closed", 32)
    assert {event["worker"] for event in closed} == {0, 1}
    ids = [event["conn_id"] for event in closed]
    assert len(set(ids)) == 32  # unique across the workers


def test_without_reuse_port_every_worker_accepts_on_the_one_socket(
    start_daemon: StartDaemon,
) -> None:
    daemon = start_daemon(config(listener("e"), listener("u", protocol="udp")))
    ports = daemon.ready()
    pids = worker_pids(daemon)
    shared = listening_sockets(daemon.proc.pid, ports["e"])
    assert len(shared) == 1
    assert all(listening_sockets(pid, ports["e"]) == shared for pid in pids.values())
    with socket.create_connection(("127.0.0.1", ports["e"]), timeout=10) as client:
        assert echo(client, b"shared") == b"shared"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(10)
        udp.sendto(b"datagram", ("127.0.0.1", ports["u"]))
        assert udp.recvfrom(64) == (b"datagram", ("127.0.0.1", ports["u"]))


def test_a_worker_killed_with_sigkill_is_started_again_while_the_others_serve(
    start_daemon: StartDaemon,
) -> None:
    daemon = start_daemon(config(listener("e")))
    port = daemon.ready()["e"]
    pids = worker_pids(daemon)
    os.kill(pids[0], signal.SIGKILL)
    exited = daemon.wait_for("worker_exited")
    assert (exited["worker"], exited["pid"], exited["signal"]) == (0, pids[0], "SIGKILL")
    assert exited["restart_in_s"] > 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        assert echo(client, b"still served") == b"still served"
        assert holders([pids[1]], port)[pids[1]] == 1  # by the worker that lives
    again = daemon.wait_for("worker_ready", where=lambda event: event["worker"] == 0)
    assert again["pid"] not in pids.values()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        assert echo(client, b"both") == b"both"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


@pytest.mark.parametrize("reuse_port", [False, True], ids=["shared", "reuse_port"])
def test_reloads_under_load_start_new_workers_and_refuse_no_one(
    start_daemon: StartDaemon, reuse_port: bool
) -> None:
    """New connections arrive throughout; open ones keep echoing while old workers drain."""
    steady = listener("steady", reuse_port=reuse_port)
    settings = "workers = 2\nshutdown_timeout_s = 60"
    daemon = start_daemon(config(steady, listener("moving", backlog=100), daemon=settings))
    ports = daemon.ready()
    first = set(worker_pids(daemon).values())
    load = Load(ports["steady"], open_count=20, new_per_s=200)
    try:
        for round_number in range(4):
            moving = listener("moving", backlog=101 + round_number)
            new = config(steady, moving, daemon=settings)
            done = reload(daemon, new)
            assert (done["unchanged"], done["changed"]) == (1, 1)
            load.wait_for_new(25)
    finally:
        load.finish()
    assert load.errors == []
    assert load.opened >= 100
    assert not first & set(worker_pids(daemon).values())  # every worker was replaced
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0


def test_sigterm_drains_every_worker_then_exits_0(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config(listener("e"), daemon="workers = 2\nshutdown_timeout_s = 30"))
    port = daemon.ready()["e"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as live:
        assert echo(live, b"before") == b"before"
        daemon.signal(signal.SIGTERM)
        started = daemon.events_until("shutdown_started", 3)  # the parent's, each worker's
        assert sorted(str(event.get("worker")) for event in started) == ["0", "1", "None"]
        assert next(e for e in started if "worker" not in e)["workers"] == 2
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        assert echo(live, b"while draining") == b"while draining"
    assert daemon.wait(30) == 0
    stopped = [e for e in daemon.events if e.get("event") == "worker_stopped"]
    assert sorted((e["worker"], e["exit_code"]) for e in stopped) == [(0, 0), (1, 0)]


@pytest.mark.parametrize("after", ["worker", "parent"])
def test_a_second_sigterm_cuts_every_drain_short(start_daemon: StartDaemon, after: str) -> None:
    """Also when it comes as soon as the parent began, before a worker heard the first
    (two SIGTERMs sent to a worker at once would arrive as one)."""
    daemon = start_daemon(config(listener("e"), daemon="workers = 2\nshutdown_timeout_s = 60"))
    port = daemon.ready()["e"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as live:
        assert echo(live, b"x") == b"x"
        daemon.signal(signal.SIGTERM)
        daemon.wait_for(
            "shutdown_started",
            where=lambda event: (event.get("worker") is None) == (after == "parent"),
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 128 + signal.SIGTERM
        with pytest.raises(ConnectionResetError):
            live.recv(1)


def test_max_connections_holds_for_the_daemon_not_per_worker(start_daemon: StartDaemon) -> None:
    """Each connection is admitted (echoed) before the next opens: no race between workers."""
    daemon = start_daemon(config(listener("e", reuse_port=True, max_connections=4)))
    port = daemon.ready()["e"]
    clients = []
    try:
        admitted = 0
        for _ in range(8):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(client)
            with contextlib.suppress(ConnectionResetError):
                admitted += echo(client, b"x") == b"x"
        assert admitted == 4
        assert sum(holders(worker_pids(daemon).values(), port).values()) == 4
    finally:
        for client in clients:
            client.close()


def test_file_receive_workers_share_the_parents_directory_lock(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    daemon = start_daemon(
        config(listener("up", "file-receive", directory=str(directory), reuse_port=True))
    )
    port = daemon.ready()["up"]
    for index in range(16):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"file %d" % index)
            client.shutdown(socket.SHUT_WR)
            assert client.recv(1) == b""
    received = daemon.events_until("file_received", 16)
    assert {event["worker"] for event in received} == {0, 1}  # both stored files
    assert sorted(path.read_bytes() for path in directory.iterdir()) == sorted(
        b"file %d" % index for index in range(16)
    )


def test_workers_auto_counts_the_cpus_of_the_affinity_mask(tmp_path: Path) -> None:
    taskset = require_tool("taskset")  # util-linux
    path = tmp_path / "portd.toml"
    path.write_text(config(listener("e"), daemon='workers = "auto"'))
    one = Daemon(["-c", str(path)], prefix=[taskset, "-c", "0"])
    try:
        ready = one.wait_for("daemon_ready")
        assert "workers" not in ready  # one CPU: one process, as workers = 1
        assert not [e for e in one.events if e.get("event") == "worker_started"]
    finally:
        one.stop()
    if len(os.sched_getaffinity(0)) < 2:
        return
    two = Daemon(["-c", str(path)], prefix=[taskset, "-c", "0,1"])
    try:
        assert two.wait_for("daemon_ready")["workers"] == 2
    finally:
        two.stop()


def test_a_reload_with_a_bad_config_keeps_the_workers_serving(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config(listener("e")))
    port = daemon.ready()["e"]
    pids = worker_pids(daemon)
    config_path(daemon).write_text(config(listener("e", backlog=0)))
    daemon.signal(signal.SIGHUP)
    assert "backlog = 0" in daemon.wait_for("reload_failed")["error"]
    assert worker_pids(daemon) == pids
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        assert echo(client, b"old") == b"old"


def test_the_parent_holds_the_listening_sockets_and_accepts_no_connection(
    start_daemon: StartDaemon,
) -> None:
    daemon = start_daemon(config(listener("e")))
    port = daemon.ready()["e"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        assert echo(client, b"x") == b"x"
        assert holders([daemon.proc.pid], port)[daemon.proc.pid] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_the_parent_drops_privileges_before_it_starts_any_worker(public_dir: Path) -> None:
    path = public_dir / "portd.toml"
    path.write_text(config(listener("e"), daemon='workers = 2\nuser = "65534"'))
    daemon = Daemon(["-c", str(path)])
    try:
        port = daemon.ready()["e"]
        dropped = daemon.events_until("privileges_dropped", 1)[0]
        started = daemon.events_until("worker_started", 2)
        assert daemon.events.index(dropped) < daemon.events.index(started[0])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            assert echo(client, b"x") == b"x"
        for pid in [daemon.proc.pid, *worker_pids(daemon).values()]:
            status = proc_status(pid)
            assert status["Uid"].split() == ["65534"] * 4, pid
            assert status["Gid"].split() == ["65534"] * 4, pid
            assert status["Groups"] == ""
            for capabilities in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
                assert int(status[capabilities], 16) == 0, (pid, capabilities)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        daemon.stop()


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def test_sockets_systemd_passed_are_shared_by_the_workers(start_daemon: StartDaemon) -> None:
    """reuse_port is for sockets portd binds: a socket systemd passed is served as it is."""
    with listening() as sock:
        port = sock.getsockname()[1]
        activator = Activator([sock], ["e"])
        daemon = start_daemon(
            config(listener("e", reuse_port=True)), prefix=activator.prefix(), **activator.popen()
        )
        assert echo_once(port, b"activated") == b"activated"  # starts portd, then served
        daemon.wait_for("daemon_ready")
        pids = worker_pids(daemon).values()
        shared = listening_sockets(daemon.proc.pid, port)
        assert len(shared) == 1
        assert all(listening_sockets(pid, port) == shared for pid in pids)


def test_ready_is_sent_once_every_worker_serves(
    start_daemon: StartDaemon, notify: NotifySocket
) -> None:
    daemon = start_daemon(
        config(listener("e")), env={**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    )
    ready = notify.until("READY")
    ready_at = datetime.now(UTC)
    assert ready["STATUS"].endswith("; 2 workers")
    served = daemon.events_until("worker_ready", 2)  # logged before the parent heard them
    assert all(datetime.fromisoformat(event["timestamp"]) <= ready_at for event in served)


def echo_once(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        return echo(client, data)


def test_workers_from_the_command_line_refuse_a_toxiproxy_api(tmp_path: Path) -> None:
    """The API's proxies live in one process: --workers over such a config is one line
    and 78, as `portd check` says of the same file with workers = 2."""
    path = tmp_path / "api.toml"
    path.write_text(
        '[daemon]\ntoxiproxy_api = "127.0.0.1:0"\n'
        '[[listener]]\nbind = "127.0.0.1:0"\nhandler = "echo"\n'
    )
    result = run_portd("serve", "-c", str(path), "--workers", "2")
    assert result.returncode == 78, result.stderr
    assert result.stderr.strip().splitlines() == [
        "portd: --workers 2: toxiproxy_api needs workers = 1: proxies made through the API "
        "live in one process"
    ]
