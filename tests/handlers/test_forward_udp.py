"""UDP forwarding: one upstream socket per client (a NAT table), replies to the right
client, sessions that time out, the max_connections bound, and the datagram toxics."""

from __future__ import annotations

import socket
import time

import pytest

from portd.testing import forward, serve

WAIT_S = 5.0


@pytest.fixture(params=["asyncio", "uvloop"])
def loop(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def udp_client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(WAIT_S)
    return sock


def test_a_hundred_clients_each_get_their_own_replies(loop: str) -> None:
    with (
        serve("echo", protocol="udp") as echo,
        forward(echo.address, protocol="udp", loop=loop) as proxy,
    ):
        clients = [udp_client() for _ in range(100)]
        try:
            for round_ in range(3):
                for index, client in enumerate(clients):
                    client.sendto(b"%d:%d" % (index, round_), proxy.address)
                for index, client in enumerate(clients):
                    assert client.recv(100) == b"%d:%d" % (index, round_)
            upstream_peers = {record.peer for record in echo.wait_datagrams(300)}
        finally:
            for client in clients:
                client.close()
    assert len(upstream_peers) == 100  # one upstream socket per client, kept across rounds


def test_a_quiet_session_times_out_and_the_next_datagram_opens_a_new_one(loop: str) -> None:
    with (
        serve("echo", protocol="udp") as echo,
        forward(echo.address, protocol="udp", udp_session_timeout_s=0.1, loop=loop) as proxy,
        udp_client() as client,
    ):
        client.sendto(b"one", proxy.address)
        assert client.recv(10) == b"one"
        time.sleep(0.4)  # a measurement: the session is older than its timeout
        client.sendto(b"two", proxy.address)
        assert client.recv(10) == b"two"
        first, second = echo.wait_datagrams(2)
    assert first.peer != second.peer


def test_sessions_stay_within_max_connections(loop: str) -> None:
    with (
        serve("echo", protocol="udp") as echo,
        forward(echo.address, protocol="udp", max_connections=3, loop=loop) as proxy,
    ):
        clients = [udp_client() for _ in range(5)]
        try:
            for client in clients:
                client.sendto(b"x", proxy.address)
                assert client.recv(10) == b"x"
            clients[0].sendto(b"again", proxy.address)  # its session made room for others
            assert clients[0].recv(10) == b"again"
            peers = [record.peer for record in echo.wait_datagrams(6)]
        finally:
            for client in clients:
                client.close()
    assert peers[5] != peers[0]  # the oldest was evicted: a new upstream socket


def test_packet_loss_drops_about_its_share(loop: str) -> None:
    with serve("echo", protocol="udp") as echo, forward(
        echo.address, protocol="udp", loop=loop,
    ) as proxy, udp_client() as client:  # fmt: skip
        proxy.add_toxic("packet_loss", loss=0.5, stream="upstream")
        for batch in range(50):  # paced: a burst must fit the proxy's socket buffer
            for index in range(20):
                client.sendto(b"%d" % (batch * 20 + index), proxy.address)
            proxy.server.wait_datagrams((batch + 1) * 20, timeout_s=WAIT_S)  # the proxy read them
        proxy.remove_toxic("packet_loss_upstream")
        client.sendto(b"end", proxy.address)  # in order behind the others, never lost
        seen = echo.wait_datagrams(1)
        while seen[-1].payload != b"end":
            seen = echo.wait_datagrams(len(seen) + 1, timeout_s=WAIT_S)
        arrived = len(seen) - 1
    assert 430 <= arrived <= 570


def test_bursty_loss_comes_in_runs() -> None:
    import random

    from portd.handlers.forward.datagram import Loss
    from portd.toxics.spec import parse_toxic

    toxic = parse_toxic({"type": "packet_loss", "loss": 0.2, "burst": 5})
    loss, rng = Loss(), random.Random(3)
    drops = [loss.drop(toxic, rng) for _ in range(50_000)]
    runs = [len(run) for run in "".join("x" if d else "." for d in drops).split(".") if run]
    assert 0.18 <= sum(drops) / len(drops) <= 0.22
    assert 4 <= sum(runs) / len(runs) <= 6


def test_udp_latency_delays_each_datagram(loop: str) -> None:
    with (
        serve("echo", protocol="udp") as echo,
        forward(
            echo.address, protocol="udp", loop=loop, toxic=[{"type": "latency", "latency": 50}]
        ) as proxy,
        udp_client() as client,
    ):
        client.sendto(b"first", proxy.address)  # opens the session (a socket, a resolve)
        assert client.recv(10) == b"first"
        times = []
        for _ in range(5):
            started = time.perf_counter()
            client.sendto(b"late", proxy.address)
            assert client.recv(10) == b"late"
            times.append((time.perf_counter() - started) * 1000)
    assert 49 <= sorted(times)[2] <= 55


def test_a_stream_toxic_on_a_udp_forward_is_a_config_error() -> None:
    from portd.errors import ConfigError

    with (
        pytest.raises(ConfigError) as caught,
        forward("127.0.0.1:9", protocol="udp", toxic=[{"type": "slicer"}]),
    ):
        pass
    assert "a udp forward takes latency, packet_loss" in str(caught.value)


def test_down_drops_datagrams_and_up_forwards_again(loop: str) -> None:
    with (
        serve("echo", protocol="udp") as echo,
        forward(echo.address, protocol="udp", loop=loop) as proxy,
        udp_client() as client,
    ):
        client.sendto(b"before", proxy.address)
        assert client.recv(10) == b"before"
        with proxy.down():
            client.sendto(b"lost", proxy.address)
            proxy.server.wait_datagrams(2)  # the proxy read it, and dropped it
        client.sendto(b"after", proxy.address)
        assert client.recv(10) == b"after"
        payloads = [record.payload for record in echo.wait_datagrams(2)]
    assert payloads == [b"before", b"after"]
