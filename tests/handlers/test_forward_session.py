"""One forwarded connection driven callback by callback on a manual clock (a fake client
connection, a fake upstream transport): the end of an upstream that closes while a
downstream toxic still holds its last bytes."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import pytest

from portd.handlers.forward import ForwardHandler
from portd.handlers.forward.session import ForwardSession, Upstream
from portd.options import defaults
from portd.testing import FakeConnection, ManualClock
from portd.toxics.spec import parse_toxic


class Client(FakeConnection):
    """The client side; the session's connect task is never run (the test connects)."""

    def start_task(self, coro: Coroutine[Any, Any, object]) -> Any:
        coro.close()


class UpstreamTransport:
    """What the session does to its upstream's transport, recorded."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closing = False
        self.reading = True

    def get_extra_info(self, name: str) -> Any:
        return None

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def connected(**settings: Any) -> tuple[Client, Upstream, UpstreamTransport]:
    """A forward session with a downstream latency toxic of 100 ms, connected."""
    toxic = parse_toxic({"type": "latency", "latency": 100})
    handler = ForwardHandler(
        {**defaults(ForwardHandler.options), "upstream": "127.0.0.1:9", "toxic": (toxic,),
         **settings}
    )  # fmt: skip
    client = Client(clock=ManualClock())
    session = handler.open_session(client)
    assert isinstance(session, ForwardSession)
    client.session = session
    transport = UpstreamTransport()
    upstream = Upstream(session)
    upstream.connection_made(transport)  # type: ignore[arg-type]
    return client, upstream, transport


@pytest.mark.parametrize("close_notify", [True, False])
def test_an_upstream_that_closes_while_a_toxic_holds_its_bytes_ends_the_client_after_them(
    close_notify: bool,
) -> None:
    """A TLS upstream closes right after its close_notify (asyncio's TLS has no
    half-close), and a connection may end without one: the bytes a downstream toxic
    holds still reach the client, then its EOF and close, none of it early."""
    client, upstream, transport = connected(upstream_tls=True)
    upstream.data_received(b"last words")
    if close_notify:
        assert upstream.eof_received() is False  # TLS: the transport closes itself
    transport.closing = True
    upstream.connection_lost(None)
    assert (bytes(client.written), client.eof_sent, client.ending) == (b"", False, None)
    client.clock.advance(0.1)
    assert (bytes(client.written), client.eof_sent, client.ending) == (b"last words", True, "close")
    assert client.session.log_fields()["upstream_ended"] == "closed"  # type: ignore[union-attr]
