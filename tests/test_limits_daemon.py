"""Limits as a real daemon sees them: caps reached and freed, per-source caps, rates and
their recovery, allow/deny, idle and send timeouts, UDP gates, and descriptor exhaustion.
127.0.0.2 and up stand in for other hosts."""

from __future__ import annotations

import contextlib
import os
import resource
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from portd.control import query
from tests.support import Daemon

StartDaemon = Callable[..., Daemon]


class Served:
    """A daemon with one listener, and its control socket to read refusal counts."""

    def __init__(self, daemon: Daemon, control: Path, port: int) -> None:
        self.daemon = daemon
        self.control = control
        self.port = port

    def stats(self) -> dict[str, Any]:
        listeners: list[dict[str, Any]] = query(str(self.control))["listeners"]
        return listeners[0]

    def wait_for_stat(self, check: Callable[[dict[str, Any]], bool], timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while not check(self.stats()):
            assert time.monotonic() < deadline, self.stats()
            time.sleep(0.01)  # polling the daemon's counters, which have no event to wait on


@pytest.fixture
def serve(start_daemon: StartDaemon, tmp_path: Path) -> Callable[..., Served]:
    def start(protocol: str = "tcp", handler: str = "echo", **limits: object) -> Served:
        control = tmp_path / "control.sock"
        lines = [
            f'[daemon]\ncontrol_socket = "{control}"\n[[listener]]\nname = "l"',
            'bind = "127.0.0.1:0"',
            f'protocol = "{protocol}"',
            f'handler = "{handler}"',
        ]
        lines += [f"{key} = {_toml(value)}" for key, value in limits.items()]
        daemon = start_daemon("\n".join(lines) + "\n")
        return Served(daemon, control, daemon.ready()["l"])

    return start


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(f'"{item}"' for item in value) + "]"
    return str(value)


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def echoes(sock: socket.socket, data: bytes = b"x") -> bool:
    """True when the daemon echoes; False when it closed or reset the connection."""
    try:
        sock.sendall(data)
        return sock.recv(len(data)) == data
    except ConnectionError:
        return False


def test_the_cap_refuses_the_next_client_at_once_and_frees_up(serve: Callable[..., Served]) -> None:
    served = serve(max_connections=3)
    held = [connect(served.port) for _ in range(3)]
    assert all(echoes(sock) for sock in held)
    with connect(served.port) as extra:
        assert not echoes(extra)
    held.pop().close()
    served.wait_for_stat(lambda stats: stats["active"] == 2)
    with connect(served.port) as again:
        assert echoes(again)
    assert served.stats()["refusals"] == {"max_connections": 1}
    for sock in held:
        sock.close()


def test_the_per_source_cap_hits_only_that_source(serve: Callable[..., Served]) -> None:
    served = serve(max_connections_per_source=2)
    mine = [connect(served.port, "127.0.0.2") for _ in range(2)]
    assert all(echoes(sock) for sock in mine)
    with connect(served.port, "127.0.0.2") as third:
        assert not echoes(third)
    with connect(served.port, "127.0.0.3") as other:
        assert echoes(other)
    assert served.stats()["refusals"] == {"max_connections_per_source": 1}
    for sock in mine:
        sock.close()


def test_the_connection_rate_refuses_past_the_burst_and_recovers(
    serve: Callable[..., Served],
) -> None:
    served = serve(connection_rate=4, connection_burst=4)
    results = []
    first_connect = time.monotonic()  # before the first token is taken
    for _ in range(6):
        with connect(served.port) as sock:
            results.append(echoes(sock))
    assert results == [True] * 4 + [False] * 2
    started = time.monotonic()
    while True:  # one token comes back every 0.25 s
        with connect(served.port) as sock:
            if echoes(sock):
                break
    # The bucket emptied no earlier than the first connect, so the token that admits
    # this one cannot be back sooner than 0.25 s after it (however slow the six were).
    assert time.monotonic() - first_connect >= 0.25
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    ("allow", "deny", "admitted"),
    [
        ([], ["127.0.0.2"], {"127.0.0.1": True, "127.0.0.2": False, "127.0.0.3": True}),
        (["127.0.0.0/8"], ["127.0.0.2/32"], {"127.0.0.1": True, "127.0.0.2": False}),
        (["127.0.0.3"], [], {"127.0.0.1": False, "127.0.0.3": True}),
    ],
    ids=["deny-one", "allow-range-deny-host", "allow-one"],
)
def test_allow_and_deny_close_refused_peers_before_the_handler(
    serve: Callable[..., Served], allow: list[str], deny: list[str], admitted: dict[str, bool]
) -> None:
    served = serve(allow=allow, deny=deny)
    for source, expected in admitted.items():
        with connect(served.port, source) as sock:
            assert echoes(sock) is expected, source
    refused = sum(1 for ok in admitted.values() if not ok)
    assert served.stats()["refusals"] == {"denied": refused}
    assert served.stats()["total"] == len(admitted) - refused  # never reached the handler


def test_an_idle_connection_is_closed_on_time_and_activity_keeps_it(
    serve: Callable[..., Served],
) -> None:
    served = serve(idle_timeout_s=1.0)
    opened = time.monotonic()  # before the connects: the daemon's clock starts at accept
    with connect(served.port) as busy, connect(served.port) as idle:
        for _ in range(4):  # 0.3 s apart: never idle for 1 s, and busy outlives the timeout
            assert echoes(busy)
            time.sleep(0.3)  # the activity pattern under test, not a readiness wait
        with pytest.raises(ConnectionResetError):  # cut by the daemon, with an RST...
            idle.recv(1)
        closed_after = time.monotonic() - opened
        assert 1.0 <= closed_after < 1.0 + 0.3 * 4  # ...at 1 s (recv returns late here)
        assert echoes(busy)
    served.wait_for_stat(lambda stats: stats["closed"].get("idle_timeout") == 1)


def test_idle_close_happens_within_half_a_second_of_the_timeout(
    serve: Callable[..., Served],
) -> None:
    served = serve(idle_timeout_s=1.0)
    opened = time.monotonic()  # before the connect: the daemon's clock starts at accept
    with connect(served.port) as idle:
        idle.settimeout(5)
        with pytest.raises(ConnectionResetError):
            idle.recv(1)
        assert 1.0 <= time.monotonic() - opened < 1.5
    closed = served.daemon.wait_for("connection_closed")
    assert closed["error"] == "idle_timeout"


def test_a_peer_that_stops_reading_is_dropped_after_the_send_timeout(
    serve: Callable[..., Served],
) -> None:
    served = serve(send_timeout_s=0.5)
    with connect(served.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        chunk = b"x" * 65536
        stalled_at = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            _, writable, _ = select.select([], [sock], [], 0.05)
            if not writable:
                stalled_at = stalled_at or time.monotonic()
                continue
            try:
                sock.send(chunk)
            except BlockingIOError:
                continue
            except ConnectionError:
                break
        else:
            pytest.fail("the daemon never dropped a peer that does not read")
    assert stalled_at is not None
    assert time.monotonic() - stalled_at < 0.5 + 0.5 + 0.5  # timeout, plus slack for buffers
    served.wait_for_stat(lambda stats: stats["closed"].get("send_timeout") == 1)
    assert served.daemon.wait_for("connection_closed")["error"] == "send_timeout"


def _low_port_udp_socket() -> socket.socket:
    for port in range(1023, 600, -1):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        return sock
    pytest.skip("no free UDP port below 1024")


@pytest.mark.skipif(os.geteuid() != 0, reason="sending from a port below 1024 needs root")
def test_udp_from_low_source_ports_is_dropped_and_counted(serve: Callable[..., Served]) -> None:
    served = serve(protocol="udp")
    with _low_port_udp_socket() as low, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as high:
        low.sendto(b"loop?", ("127.0.0.1", served.port))
        served.wait_for_stat(lambda stats: stats["refusals"] == {"low_source_port": 1})
        high.settimeout(10)
        high.sendto(b"fine", ("127.0.0.1", served.port))
        assert high.recv(16) == b"fine"


def test_udp_per_source_rate_drops_the_excess(serve: Callable[..., Served]) -> None:
    served = serve(protocol="udp", datagram_rate=1, datagram_burst=2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.2", 0))
        for index in range(5):
            client.sendto(b"%d" % index, ("127.0.0.1", served.port))
        served.wait_for_stat(lambda stats: stats["refusals"] == {"datagram_rate": 3})
        client.settimeout(10)
        assert sorted(client.recv(16) for _ in range(2)) == [b"0", b"1"]


def test_out_of_descriptors_under_400_connections_it_idles_and_recovers(
    start_daemon: StartDaemon,
) -> None:
    """prlimit --nofile=256: the daemon pauses accepting, stays idle, then serves everyone."""
    daemon = start_daemon(
        '[[listener]]\nname = "l"\nbind = "127.0.0.1:0"\nhandler = "echo"\nbacklog = 512\n',
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)),
    )
    port = daemon.ready()["l"]
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(limits[0], 2048), max(limits[1], 2048)))
    clients = [connect(port) for _ in range(400)]
    try:
        daemon.wait_for("accept_failed")
        process = psutil.Process(daemon.proc.pid)
        before = process.cpu_times()
        time.sleep(1.0)  # the interval over which a spinning accept loop would burn CPU
        after = process.cpu_times()
        assert (after.user + after.system) - (before.user + before.system) < 0.3
        for sock in clients:  # each close frees a descriptor for a client still waiting
            assert echoes(sock)
            sock.close()
        with connect(port) as late:
            assert echoes(late)
    finally:
        for sock in clients:
            with contextlib.suppress(OSError):
                sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def http_get(sock: socket.socket) -> bytes:
    """One GET on a keep-alive connection; the whole response."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            return response
        response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


def test_a_full_http_listener_answers_503_and_closes(serve: Callable[..., Served]) -> None:
    served = serve(handler="http-hello", max_connections=1)
    with connect(served.port) as first:
        assert http_get(first).startswith(b"HTTP/1.1 200 OK\r\n")
        with connect(served.port) as second:
            reply = b""
            while chunk := second.recv(4096):
                reply += chunk
    assert reply.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nConnection: close\r\n" in reply
    assert served.stats()["refusals"] == {"max_connections": 1}


def test_a_slowloris_crowd_is_cut_off_on_time_while_normal_clients_see_no_errors(
    start_daemon: StartDaemon,
) -> None:
    """500 clients sending a request head one byte a second get 408 at header_timeout_s."""
    daemon = start_daemon(
        '[[listener]]\nname = "web"\nbind = "127.0.0.1:0"\nhandler = "http-hello"\n'
        "header_timeout_s = 2\n"
    )
    port = daemon.ready()["web"]
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(limits[0], 2048), max(limits[1], 2048)))
    head = b"GET / HTTP/1.1\r\nHost: slow\r\nX-Padding: " + b"a" * 64
    slow = [connect(port) for _ in range(500)]
    started = time.monotonic()
    open_slow = {sock.fileno(): sock for sock in slow}
    replies: dict[int, bytes] = dict.fromkeys(open_slow, b"")
    normal_errors: list[str] = []
    normal_ok = 0
    try:
        sent = 0
        with connect(port) as normal:
            while open_slow and time.monotonic() - started < 6:
                if sent < len(head) and time.monotonic() - started >= sent:  # one byte a second
                    for sock in list(open_slow.values()):
                        with contextlib.suppress(OSError):
                            sock.send(head[sent : sent + 1])
                    sent += 1
                response = http_get(normal)
                if response.startswith(b"HTTP/1.1 200 OK\r\n"):
                    normal_ok += 1
                else:
                    normal_errors.append(response[:40].decode(errors="replace"))
                readable, _, _ = select.select(list(open_slow.values()), [], [], 0.01)
                for sock in readable:
                    try:
                        chunk = sock.recv(4096)
                    except ConnectionError:
                        chunk = b""
                    replies[sock.fileno()] += chunk
                    if not chunk:
                        del open_slow[sock.fileno()]
        cut_off_after = time.monotonic() - started
    finally:
        for sock in slow:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    assert not open_slow, f"{len(open_slow)} slow clients were still connected"
    assert 2.0 <= cut_off_after < 2.0 + 1.5
    assert all(reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n") for reply in replies.values())
    assert normal_errors == []
    assert normal_ok > 50


def test_the_refusal_log_counts_add_up_to_every_refusal(serve: Callable[..., Served]) -> None:
    """500 refusals within a second were one line with count 1 (the rest never logged)."""
    served = serve(deny=["127.0.0.2"])
    for _ in range(500):
        with connect(served.port, "127.0.0.2") as sock:
            assert not echoes(sock)
    logged = 0
    while logged < 500:
        line = served.daemon.wait_for("connection_refused")
        assert (line["reason"], line["last_peer"].split(":")[0]) == ("denied", "127.0.0.2")
        logged += line["count"]
    assert logged == 500
    assert served.stats()["refusals"] == {"denied": 500}
    served.daemon.signal()
    assert served.daemon.wait() == 0
    assert (
        sum(e.get("count", 0) for e in served.daemon.events if e["event"] == "connection_refused")
        == 500
    )


def test_udp_drops_logged_at_stop_add_up_too(serve: Callable[..., Served]) -> None:
    served = serve(protocol="udp", datagram_rate=1, datagram_burst=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for _ in range(50):
            client.sendto(b"x", ("127.0.0.1", served.port))
        served.wait_for_stat(lambda stats: stats["refusals"] == {"datagram_rate": 49})
    served.daemon.signal()  # at once: the count since the last line is written at stop
    assert served.daemon.wait() == 0
    dropped = [e for e in served.daemon.events if e["event"] == "datagram_dropped"]
    assert sum(e["count"] for e in dropped) == 49
