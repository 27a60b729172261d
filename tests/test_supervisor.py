"""The supervisor in-process, on both event loops: all-or-nothing binding, crash
containment, draining. (tests/test_daemon.py covers the same through `portd serve`.)"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import psutil
import pytest
import structlog
from structlog.testing import capture_logs

from portd.config import Config
from portd.errors import AddressInUseError
from portd.handlers.base import Connection, Handler, StreamSession
from portd.handlers.echo import EchoHandler
from portd.supervisor import Supervisor
from tests.support import listener_config

pytestmark = pytest.mark.anyio


class CrashSession(StreamSession):
    """Echoes, but raises on data starting with b"boom" (a handler bug)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        if data.startswith(b"boom"):
            raise RuntimeError("handler bug")
        self.conn.write(data)


class CrashHandler(Handler):
    name = "crash"
    protocols = frozenset({"tcp"})

    def open_session(self, conn: Connection) -> StreamSession:
        return CrashSession(conn)


async def roundtrip(port: int, data: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(data)
        await stream.send_eof()
        received = b""
        async for chunk in stream:
            received += chunk
        return received


@asynccontextmanager
async def started(*handlers: type[Handler]) -> AsyncIterator[Supervisor]:
    config = Config(
        "test",
        listeners=tuple(
            listener_config(handler, name=f"l{i}", index=i) for i, handler in enumerate(handlers)
        ),
    )
    supervisor = Supervisor(config)
    supervisor.bind_all()
    try:
        await supervisor.start()
        yield supervisor
    finally:
        await supervisor.drain(0)
        await supervisor.abort_connections()
        supervisor.close()


async def test_handler_crash_closes_that_connection_only_and_is_logged_once() -> None:
    with capture_logs() as logs:
        async with started(CrashHandler) as supervisor:
            port = supervisor.listeners[0].port
            async with await anyio.connect_tcp("127.0.0.1", port) as bad:
                await bad.send(b"boom")
                with anyio.fail_after(5):
                    try:
                        tail = await bad.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                        tail = b""
                assert tail == b""
            assert await roundtrip(port, b"still serving") == b"still serving"
    failures = [entry for entry in logs if entry["event"] == "handler_failed"]
    assert len(failures) == 1
    assert isinstance(failures[0]["exc_info"], RuntimeError)
    closed = [entry for entry in logs if entry["event"] == "connection_closed"]
    assert len(closed) == 2


async def test_bind_all_closes_every_listener_when_a_later_one_fails() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        first = listener_config(EchoHandler, name="first")
        second = listener_config(EchoHandler, bind=f"127.0.0.1:{busy}", name="second", index=2)
        supervisor = Supervisor(Config("test", listeners=(first, second)))
        with pytest.raises(AddressInUseError, match=r'^listener "second": 127\.0\.0\.1:'):
            supervisor.bind_all()
        assert supervisor.listeners == []
        assert _listening_ports() == {busy}, "the first listener's socket was left open"


def _listening_ports() -> set[int]:
    """Ports this process listens on, from psutil."""
    return {
        c.laddr.port
        for c in psutil.Process(os.getpid()).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


async def test_drain_refuses_new_clients_and_lets_live_ones_finish() -> None:
    structlog.reset_defaults()
    async with started(EchoHandler) as supervisor:
        port = supervisor.listeners[0].port
        live = await anyio.connect_tcp("127.0.0.1", port)
        await live.send(b"before")
        assert await live.receive() == b"before"
        async with anyio.create_task_group() as group:
            group.start_soon(supervisor.drain, 30)
            await anyio.lowlevel.checkpoint()  # drain stops accepting before its first await
            with pytest.raises(OSError, match=r"refused|Connect call failed|All connection"):
                await anyio.connect_tcp("127.0.0.1", port)
            await live.send(b"during")
            assert await live.receive() == b"during"
            await live.aclose()
        assert supervisor.listeners[0].connections == set()


class PoliteSession(StreamSession):
    """Closes its connection as soon as the daemon starts draining."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def shutdown_requested(self) -> None:
        assert self.conn.draining
        self.conn.write(b"bye")
        self.conn.close()


class PoliteHandler(Handler):
    name = "polite"
    protocols = frozenset({"tcp"})

    def open_session(self, conn: Connection) -> StreamSession:
        return PoliteSession(conn)


async def test_drain_tells_live_sessions_so_they_can_close_early() -> None:
    async with started(PoliteHandler) as supervisor:
        port = supervisor.listeners[0].port
        async with await anyio.connect_tcp("127.0.0.1", port) as client:
            while not supervisor.listeners[0].connections:
                await anyio.lowlevel.checkpoint()
            with anyio.fail_after(5):  # far below the 30 s drain timeout
                await supervisor.drain(30)
                assert await client.receive() == b"bye"
