"""Leak checks at a test server's stop: what counts as a leak, how it is reported, and
that starting and stopping servers itself leaks nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from pathlib import Path

import pytest

from portd.handlers.base import Connection, Handler, StreamSession
from portd.testing import LeakError, ServeContext, serve


def open_fds() -> set[str]:
    return {path.name for path in Path("/proc/self/fd").iterdir()}


def stop(context: ServeContext) -> LeakError:
    """Leave a serve() block that must report leaks; return the report."""
    with pytest.raises(LeakError) as raised:
        context.__exit__(None, None, None)
    return raised.value


def test_a_client_left_open_is_reported_with_its_peer_and_bytes() -> None:
    context = serve(check_leaks=True, leak_grace_s=0.05)
    server = context.__enter__()
    client = socket.create_connection(server.address, timeout=5)
    client.sendall(b"hello")
    assert client.recv(5) == b"hello"
    leaks = stop(context)
    local, fd = f"127.0.0.1:{client.getsockname()[1]}", client.fileno()
    client.close()
    assert str(leaks).splitlines() == [
        f"echo server on 127.0.0.1:{server.port} (tcp) leaked:",
        "  1 connections still open (the client never closed them):",
        f"    #1 from {local}: 5 bytes in, 5 out",
        "  1 sockets still open:",
        f"    fd {fd}: a client socket {local} connected to the server at {server.address[0]}:"
        f"{server.port}",
    ]
    assert server.connections[0].how_it_ended == "aborted"


def test_a_client_socket_kept_after_the_server_closed_is_reported() -> None:
    context = serve("close-after", check_leaks=True)
    server = context.__enter__()
    client = socket.create_connection(server.address, timeout=5)
    assert client.recv(1) == b""  # the server closed; the client keeps its fd
    server.wait_connections(1)
    leaks = stop(context)
    fd, local = client.fileno(), client.getsockname()
    client.close()
    (line,) = leaks.reports[0].sockets
    assert line == (
        f"fd {fd}: a client socket {local[0]}:{local[1]} connected to the server at "
        f"127.0.0.1:{server.port}"
    )


class SpawningSession(StreamSession):
    """Starts a task that never ends: a handler bug the leak check must name."""

    def __init__(self) -> None:
        asyncio.get_running_loop().create_task(asyncio.Event().wait(), name="forgotten")


class SpawningHandler(Handler):
    name = "spawning"
    protocols = frozenset({"tcp"})

    def open_session(self, conn: Connection) -> StreamSession:
        return SpawningSession()


def test_a_task_left_pending_on_the_servers_loop_is_reported() -> None:
    context = serve(SpawningHandler, check_leaks=True)
    server = context.__enter__()
    with socket.create_connection(server.address, timeout=5):
        pass
    server.wait_connections(1)
    (task,) = stop(context).reports[0].tasks
    assert task.startswith("forgotten: Event.wait at ")


def test_nothing_is_raised_over_an_exception_from_the_block() -> None:
    context = serve(check_leaks=True, leak_grace_s=0)
    server = context.__enter__()
    client = socket.create_connection(server.address, timeout=5)
    failure = KeyError("the test's own failure")
    context.__exit__(KeyError, failure, None)  # returns: the block's exception goes on
    client.close()
    assert server.leaks is not None
    assert len(server.leaks.connections) == 1


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_clients_that_closed_just_before_the_stop_are_no_leak(loop: str) -> None:
    for handler in ("echo", "blackhole", "stall", "latency", "http-hello"):
        with serve(handler, check_leaks=True, loop=loop) as server:
            for _ in range(3):
                client = socket.create_connection(server.address, timeout=5)
                client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                client.close()
        assert len(server.connections) == 3, handler


def fill_the_window(client: socket.socket) -> int:
    """Write to a server that never reads until the kernel takes no more: the server's
    receive window is then zero, so a FIN sent next waits behind the unsent bytes."""
    client.setblocking(False)
    sent = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            sent += client.send(bytes(1 << 16))
    return sent


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("how", ["close", "shutdown"])
def test_a_client_that_hung_up_behind_a_full_window_is_no_leak(loop: str, how: str) -> None:
    """Issue 10, item 20: the FIN of a client that closed (or half-closed) after filling a
    blackhole's window never reaches the server, which saw no hang-up; the kernel's socket
    at the client's end (FIN-WAIT-1) says the client is done, so it is no leak."""
    with serve("blackhole", check_leaks=True, loop=loop) as server:
        client = socket.create_connection(server.address, timeout=5)
        assert fill_the_window(client) > 0
        if how == "close":
            client.close()
        else:
            client.shutdown(socket.SHUT_WR)
    client.close()
    assert server.leaks is not None
    assert not server.leaks
    assert [record.how_it_ended for record in server.connections] == ["closed"]


def test_a_client_still_holding_a_full_window_is_a_leak() -> None:
    """The same connection with the client still open is reported: the check can fail."""
    context = serve("blackhole", check_leaks=True, leak_grace_s=0.05)
    server = context.__enter__()
    client = socket.create_connection(server.address, timeout=5)
    fill_the_window(client)
    local = client.getsockname()
    leaks = stop(context)
    client.close()
    assert leaks.reports[0].connections == (f"#1 from {local[0]}:{local[1]}: 0 bytes in, 0 out",)


def test_without_netlink_the_proc_tables_tell_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """sock_diag refused (a sandbox): /proc/net/tcp gives the client end's state."""
    from portd.inspect import sockdiag

    def refused() -> socket.socket:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(sockdiag, "_netlink", refused)
    with serve("blackhole", check_leaks=True) as server:
        client = socket.create_connection(server.address, timeout=5)
        fill_the_window(client)
        client.close()
    assert [record.how_it_ended for record in server.connections] == ["closed"]


def test_a_refused_connection_is_logged_through_the_test_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Listener options (limits) work too, and their log lines stay in portd.testing."""
    with serve(max_connections=1) as server, socket.create_connection(server.address):
        with socket.create_connection(server.address, timeout=5) as second:
            assert second.recv(1) == b""
        server.wait_connections(0)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "portd.testing"]
    assert line.startswith("connection_refused listener='echo-tcp-127.0.0.1-0'")


@pytest.mark.parametrize("handler", ["echo", "refuse"])
def test_200_sync_start_stop_cycles_leak_no_fd_or_thread(handler: str) -> None:
    before_fds, before_threads = open_fds(), threading.active_count()
    for _ in range(200):
        with serve(handler, check_leaks=True) as server:
            if handler == "echo":
                with socket.create_connection(server.address, timeout=5) as client:
                    client.sendall(b"x")
                    assert client.recv(1) == b"x"
    assert open_fds() == before_fds
    assert threading.active_count() == before_threads


async def echo_cycle() -> None:
    async with serve(check_leaks=True) as server:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        writer.close()
        await writer.wait_closed()


@pytest.mark.anyio
async def test_200_async_start_stop_cycles_leak_no_fd_or_task() -> None:
    await echo_cycle()  # the loop makes what it keeps on first use (uvloop: a resolver fd)
    before_fds, before_tasks = open_fds(), len(asyncio.all_tasks())
    for _ in range(200):
        await echo_cycle()
    assert open_fds() == before_fds
    assert len(asyncio.all_tasks()) == before_tasks


def test_the_stdlib_logger_level_decides_when_no_level_is_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="portd.testing")
    with serve(protocol="udp"):
        pass
    assert [r.getMessage().split()[0] for r in caplog.records] == ["listener_started"]
