"""serve(): sync (background thread) and async (the caller's loop) on both event loops,
the address it yields, its records, and its errors."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any, ClassVar

import anyio
import pytest
import structlog

from portd.endpoints.base import Peer
from portd.errors import ConfigError, PortdError
from portd.handlers.base import Connection, DatagramEndpoint, Handler, StreamSession
from portd.testing import HandlerFailedError, Server, serve
from tests.conftest import needs_ipv6


def echo_roundtrip(server: Server, data: bytes = b"ping") -> bytes:
    with socket.create_connection(server.address, timeout=5) as client:
        client.sendall(data)
        return client.recv(len(data))


async def echo_roundtrip_async(server: Server, data: bytes = b"ping") -> bytes:
    async with await anyio.connect_tcp(server.host, server.port) as client:
        await client.send(data)
        return await client.receive()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sync_serve_accepts_on_entry_and_records_each_connection(loop: str) -> None:
    with serve(loop=loop) as server:
        assert echo_roundtrip(server, b"one") == b"one"
        assert echo_roundtrip(server, b"three") == b"three"
        records = server.wait_connections(2)
    assert [(r.conn_id, r.bytes_in, r.bytes_out, r.how_it_ended) for r in records] == [
        (1, 3, 3, "closed"),
        (2, 5, 5, "closed"),
    ]
    assert all(r.peer.startswith("127.0.0.1:") and r.received is None for r in records)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(server.address, timeout=5)


@pytest.mark.anyio
async def test_async_serve_runs_on_the_callers_loop() -> None:
    threads = threading.active_count()
    async with serve(check_leaks=True) as server:
        assert threading.active_count() == threads
        assert await echo_roundtrip_async(server) == b"ping"
        (record,) = await server.wait_connections_async(1)
        assert record.bytes_in == 4
        with pytest.raises(RuntimeError, match=r"use await server\.wait_connections_async"):
            server.wait_connections(1)
    assert server.leaks is not None
    assert not server.leaks


@pytest.mark.anyio
async def test_a_sync_server_can_be_awaited_from_async_code() -> None:
    with serve() as server:
        assert await echo_roundtrip_async(server) == b"ping"
        assert len(await server.wait_connections_async(1)) == 1


def test_address_host_port_and_url() -> None:
    with serve("http-hello") as server:
        assert server.address == (server.host, server.port) == ("127.0.0.1", server.port)
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert repr(server) == f"<portd test server http-hello tcp 127.0.0.1:{server.port}>"


def test_a_wildcard_bind_gives_a_loopback_address_to_connect_to() -> None:
    with serve(bind="0.0.0.0:0") as server:
        assert server.host == "127.0.0.1"
        assert echo_roundtrip(server) == b"ping"


@needs_ipv6
def test_ipv6_urls_have_brackets() -> None:
    with serve(bind="[::1]:0") as server:
        assert server.url == f"http://[::1]:{server.port}"
        assert echo_roundtrip(server) == b"ping"


def test_udp_records_datagrams_and_has_no_url() -> None:
    with (
        serve(protocol="udp", check_leaks=True) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        client.settimeout(5)
        client.sendto(b"dgram", server.address)
        assert client.recv(64) == b"dgram"
        assert [d.payload for d in server.wait_datagrams(1)] == [b"dgram"]
        with pytest.raises(ValueError, match="a udp server has no HTTP URL"):
            _ = server.url


def test_waiting_for_records_that_never_come_times_out() -> None:
    with serve() as server, pytest.raises(TimeoutError, match="0 of 1 connections recorded"):
        server.wait_connections(1, timeout_s=0.05)


def test_bad_options_fail_on_entry_with_the_config_loaders_message() -> None:
    with pytest.raises(ConfigError) as raised, serve("latency", delay_s=-1, colour="red"):
        pass
    bad_delay, unknown = raised.value.lines
    assert bad_delay == (
        "portd.testing: [[listener]] #1: delay_s = -1: expected a number from 0 to 3600"
    )
    assert unknown.startswith(
        'portd.testing: [[listener]] #1: colour = "red": unknown key; allowed keys: '
    )
    assert {"delay_s", "jitter_s", "seed", "wraps"} <= set(unknown.split(": ")[-1].split(", "))


class ShoutSession(StreamSession):
    def __init__(self, conn: Connection, suffix: str) -> None:
        self.conn, self.suffix = conn, suffix.encode()

    def data_received(self, data: bytes) -> None:
        self.conn.write(data.upper() + self.suffix)


class ShoutHandler(Handler):
    """Not registered anywhere: serve() takes the class itself."""

    name = "shout"
    protocols = frozenset({"tcp"})
    from portd.options import Option

    options = (Option("suffix", str, "!", "appended to each reply"),)

    def open_session(self, conn: Connection) -> StreamSession:
        return ShoutSession(conn, self.settings["suffix"])


def test_an_unregistered_handler_class_is_served_with_checked_options() -> None:
    with (
        serve(ShoutHandler, suffix="?!") as server,
        socket.create_connection(server.address, timeout=5) as client,
    ):
        client.sendall(b"hey")
        client.shutdown(socket.SHUT_WR)
        assert client.recv(64) == b"HEY?!"
    with pytest.raises(ConfigError, match=r"handler 'shout': suffix = 3: expected a string"):
        serve(ShoutHandler, suffix=3).__enter__()
    with pytest.raises(ConfigError, match=r"protocol = 'udp': 'shout' serves tcp only"):
        serve(ShoutHandler, protocol="udp").__enter__()


def test_a_context_serves_once() -> None:
    context = serve()
    with context:
        pass
    with pytest.raises(RuntimeError, match="already in use"), context:
        pass


def test_async_form_without_asyncio_says_what_to_do() -> None:
    async def enter() -> None:
        async with serve():
            pass

    coroutine: Any = enter()
    with pytest.raises(PortdError, match=r"needs an asyncio event loop \(trio: use the sync"):
        coroutine.send(None)
    coroutine.close()


def test_logs_go_to_the_portd_testing_logger_and_leave_structlog_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = structlog.get_config()
    with caplog.at_level(logging.INFO, logger="portd.testing"), serve() as server:
        echo_roundtrip(server)
        server.wait_connections(1)
    events = [record.getMessage().split()[0] for record in caplog.records]
    assert events[0] == "listener_started"
    assert "connection_closed" in events
    assert structlog.get_config() == before


def test_logs_are_quiet_by_default(caplog: pytest.LogCaptureFixture) -> None:
    with serve() as server:
        echo_roundtrip(server)
        server.wait_connections(1)
    assert [r for r in caplog.records if r.name == "portd.testing"] == []


def test_an_explicit_log_level_wins(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG), serve(log_level="warning") as server:
        echo_roundtrip(server)
        server.wait_connections(1)
    assert [r for r in caplog.records if r.name == "portd.testing"] == []
    with pytest.raises(ValueError, match="log_level 'loud'"), serve(log_level="loud"):
        pass


class Broken(Handler):
    name = "broken"
    protocols = frozenset({"tcp", "udp"})

    def open_session(self, conn: Connection) -> StreamSession:
        raise RuntimeError("handler bug")

    def datagram_received(self, data: bytes, peer: Peer, endpoint: DatagramEndpoint) -> None:
        raise ValueError(f"datagram bug {len(data)}")


def test_a_handler_failure_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with serve(Broken, raise_handler_errors=False) as server:
        with socket.create_connection(server.address, timeout=5) as client:
            assert client.recv(1) == b""
        (record,) = server.wait_connections(1)
    assert record.how_it_ended == "handler_failed"
    (logged,) = [r for r in caplog.records if r.name == "portd.testing"]
    assert logged.levelno == logging.ERROR
    assert logged.getMessage().startswith("handler_failed listener='broken-tcp-127.0.0.1-0'")
    assert "RuntimeError: handler bug" in logged.getMessage()


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_a_handler_that_raises_fails_the_block_that_served_it(protocol: str) -> None:
    """Like pytest-httpserver: a server-side bug is the test's failure, not a silent log."""
    context = serve(Broken, protocol=protocol)  # type: ignore[arg-type]
    _provoke(context.__enter__(), protocol)
    with pytest.raises(HandlerFailedError) as raised:
        context.__exit__(None, None, None)  # leaving the block, as `with` would
    cause = raised.value.__cause__
    if protocol == "tcp":
        assert isinstance(cause, RuntimeError)
        assert str(raised.value).endswith("the handler raised RuntimeError: handler bug")
    else:
        assert isinstance(cause, ValueError)
        assert "the handler raised ValueError: datagram bug 4 (and 1 more)" in str(raised.value)


def _provoke(server: Server, protocol: str) -> None:
    if protocol == "tcp":
        with socket.create_connection(server.address, timeout=5) as client:
            assert client.recv(1) == b""
        server.wait_connections(1)
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for _ in range(2):
            client.sendto(b"boom", server.address)
        server.wait_datagrams(2)


def test_asyncio_run_inside_a_test_is_unaffected() -> None:
    """The server's private loop is never set as the thread's current loop."""
    with serve() as server:
        assert asyncio.run(echo_roundtrip_async(server)) == b"ping"


def test_a_handler_class_default_idle_timeout_cuts_a_silent_client() -> None:
    """Handler-declared limits reach the listener through serve() too."""
    from portd.handlers.echo import EchoHandler

    class QuickEcho(EchoHandler):
        name = "quick-echo"
        default_limits: ClassVar[dict[str, Any]] = {"idle_timeout_s": 0.3}

    with serve(QuickEcho) as server:
        started = time.monotonic()  # before the connect: the server may accept before we go on
        c = socket.create_connection(server.address, timeout=5)
        with c, pytest.raises(ConnectionResetError):
            c.recv(1)
        assert 0.3 <= time.monotonic() - started < 2.0
        (record,) = server.wait_connections(1)
        assert record.how_it_ended == "idle_timeout"
    with serve(QuickEcho, idle_timeout_s=0) as server:
        assert server.running.config.limits.idle_timeout_s == 0
