"""Adoptions: every socket of an accept batch becomes a transport, each is reported once,
after its protocol's connection_made, with its own token; a failure is reported with the
socket still the caller's; a waiter not done at the batch's end is resumed when it is."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any, cast

import pytest

from portd.listeners.adopt import Adoptions

pytestmark = pytest.mark.anyio


class Made(asyncio.Protocol):
    """Notes when the loop made its transport."""

    def __init__(self, order: list[str], name: str) -> None:
        self.order, self.name = order, name
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.order.append(f"made {self.name}")


async def test_a_batch_is_adopted_and_reported_after_each_connection_made() -> None:
    loop = asyncio.get_running_loop()
    order: list[str] = []
    reports: list[tuple[BaseException | None, socket.socket, Any]] = []
    everyone_reported = asyncio.Event()

    def adopted(error: BaseException | None, sock: socket.socket, token: Any) -> None:
        reports.append((error, sock, token))
        order.append(f"adopted {token}")
        if len(reports) == 5:
            everyone_reported.set()

    adoptions = Adoptions(adopted)
    adoptions.start(loop)
    pairs = [socket.socketpair() for _ in range(5)]
    protocols = [Made(order, str(n)) for n in range(5)]
    for n, (ours, _theirs) in enumerate(pairs):
        adoptions.adopt(lambda n=n: protocols[n], ours, str(n))  # type: ignore[misc]
    adoptions.batch_done()
    await asyncio.wait_for(everyone_reported.wait(), 5)

    assert [token for _, _, token in reports] == ["0", "1", "2", "3", "4"]
    assert all(error is None for error, _, _ in reports)
    assert [sock for _, sock, _ in reports] == [ours for ours, _ in pairs]
    for n in range(5):  # each reported only once its protocol had its transport
        assert order.index(f"made {n}") < order.index(f"adopted {n}")
    for protocol, (_ours, theirs) in zip(protocols, pairs, strict=True):
        transport = cast(asyncio.Transport, protocol.transport)
        transport.write(b"ping")  # the transports are live: bytes reach the other end
        theirs.settimeout(5)
        assert theirs.recv(4) == b"ping"
        transport.close()
        theirs.close()


async def test_a_failure_before_the_transport_is_reported_and_the_socket_left_to_the_caller() -> (
    None
):
    reports: list[tuple[BaseException | None, Any]] = []
    adoptions = Adoptions(lambda error, _sock, token: reports.append((error, token)))
    adoptions.start(asyncio.get_running_loop())
    ours, theirs = socket.socketpair()

    def refuse() -> asyncio.Protocol:
        raise ConnectionResetError("gone")

    adoptions.adopt(refuse, ours, "peer")
    assert len(reports) == 1  # at once, not at the batch's end
    assert isinstance(reports[0][0], ConnectionResetError)
    assert reports[0][1] == "peer"
    assert ours.fileno() >= 0  # not closed for the caller
    ours.close()
    theirs.close()


class SlowLoop:
    """A loop whose connect_accepted_socket waits on a future the test completes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiter: asyncio.Future[None] = loop.create_future()

    def connect_accepted_socket(
        self, _factory: Any, _sock: socket.socket
    ) -> Coroutine[Any, Any, str]:
        async def made() -> str:
            await self.waiter
            return "made"

        return made()

    def call_soon(self, callback: Any, *args: Any) -> asyncio.Handle:
        return self.loop.call_soon(callback, *args)


class SlowAdoption:
    """One socketpair end adopted on a SlowLoop, its reports collected."""

    def __init__(self, loop: asyncio.AbstractEventLoop, token: str) -> None:
        self.slow = SlowLoop(loop)
        self.reports: list[tuple[BaseException | None, Any]] = []
        self.reported = asyncio.Event()
        self.ours, self.theirs = socket.socketpair()
        adoptions = Adoptions(self._adopted)
        adoptions.start(cast(asyncio.AbstractEventLoop, self.slow))
        adoptions.adopt(asyncio.Protocol, self.ours, token)
        adoptions.batch_done()

    def _adopted(self, error: BaseException | None, _sock: socket.socket, token: Any) -> None:
        self.reports.append((error, token))
        self.reported.set()

    def close(self) -> None:
        self.ours.close()
        self.theirs.close()


async def test_a_waiter_not_done_when_the_batch_ends_is_resumed_once_it_is() -> None:
    adoption = SlowAdoption(asyncio.get_running_loop(), "late")
    for _ in range(3):  # the batch's end comes and goes: nothing to report yet
        await asyncio.sleep(0)
    assert adoption.reports == []
    adoption.slow.waiter.set_result(None)
    await asyncio.wait_for(adoption.reported.wait(), 5)
    assert adoption.reports == [(None, "late")]
    adoption.close()


async def test_a_cancelled_waiter_is_reported_as_a_failure() -> None:
    adoption = SlowAdoption(asyncio.get_running_loop(), "cancelled")
    await asyncio.sleep(0)  # the batch's end: the waiter is not done, so it is watched
    adoption.slow.waiter.cancel()
    await asyncio.wait_for(adoption.reported.wait(), 5)
    assert [(type(error), token) for error, token in adoption.reports] == [
        (asyncio.CancelledError, "cancelled")
    ]
    adoption.close()


async def test_one_reports_failure_leaves_the_rest_of_the_batch_reported() -> None:
    """A bug in the caller's callback for one socket goes to the loop's exception
    handler; the sockets after it in the batch are still finished."""
    loop = asyncio.get_running_loop()
    handled: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: handled.append(context))
    reports: list[Any] = []
    everyone = asyncio.Event()

    def adopted(error: BaseException | None, _sock: socket.socket, name: Any) -> None:
        reports.append(name)
        if len(reports) == 3:
            everyone.set()
        if name == "0":
            raise ValueError("the caller's bug")

    adoptions = Adoptions(adopted)
    adoptions.start(loop)
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        for n, (ours, _theirs) in enumerate(pairs):
            adoptions.adopt(asyncio.Protocol, ours, str(n))
        adoptions.batch_done()
        await asyncio.wait_for(everyone.wait(), 5)
    finally:
        loop.set_exception_handler(previous)
    assert reports == ["0", "1", "2"]
    assert [type(context["exception"]) for context in handled] == [ValueError]
    for _ours, theirs in pairs:  # the transports own their ends; close the others'
        theirs.close()
