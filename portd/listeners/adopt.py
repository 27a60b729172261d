"""Turning accepted sockets into transports, without a task or a callback per connection.

``loop.connect_accepted_socket`` is a coroutine: it makes the transport at once, then
waits for the protocol's ``connection_made`` (scheduled by the loop) before it returns.
Wrapping it in a task per accepted socket, as ``create_task`` would, costs an object, a
loop iteration and a wake-up per connection, the largest share of the accept path
after the kernel's own work. Here each coroutine is stepped directly, the way a task
steps it: the first step runs inside the accept callback. The rest waits for the end of
the accept batch: one callback, scheduled behind every ``connection_made`` of the batch,
finishes them all (a done-callback per waiter and its scheduled call cost more than the
adoption's own Python).
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable, Coroutine
from typing import Any

# Called once per socket: (None when the transport is made, or the error that stopped it;
# the socket; the caller's token for it).
Adopted = Callable[[BaseException | None, socket.socket, Any], None]
_Step = tuple[Coroutine[Any, Any, Any], Any, socket.socket, Any]  # (coro, awaited, sock, token)


class Adoptions:
    """The sockets of one acceptor on their way to becoming transports."""

    __slots__ = ("_adopted", "_loop", "_scheduled", "_waiting")

    def __init__(self, adopted: Adopted) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._adopted = adopted
        self._waiting: list[_Step] = []
        self._scheduled = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make transports on ``loop`` from now on."""
        self._loop = loop

    def adopt(
        self, protocol_factory: Callable[[], asyncio.Protocol], sock: socket.socket, token: Any
    ) -> None:
        """Serve ``sock`` (accepted, blocking or not) with a protocol from
        ``protocol_factory``; ``adopted`` hears how it went, with ``token``.

        The transport owns ``sock`` once made; if making it fails, ``adopted`` gets the
        error and the caller still owns (and closes) the socket.
        """
        assert self._loop is not None  # started
        self._step(self._loop.connect_accepted_socket(protocol_factory, sock), sock, token)

    def batch_done(self) -> None:
        """The acceptor has taken every socket of this wake-up: finish them after the
        ``connection_made`` calls the loop has just queued."""
        if self._waiting and not self._scheduled:
            assert self._loop is not None
            self._scheduled = True
            self._loop.call_soon(self._finish)

    def _step(self, coro: Coroutine[Any, Any, Any], sock: socket.socket, token: Any) -> None:
        error: BaseException | None = None
        try:
            awaited = coro.send(None)
        except StopIteration:
            pass
        except (OSError, RuntimeError, asyncio.CancelledError) as exc:  # the peer left
            # before the transport was made (RuntimeError: the loop closed the transport
            # before connection_made; CancelledError: its waiter was cancelled)
            error = exc
        else:
            self._waiting.append((coro, awaited, sock, token))
            return
        self._adopted(error, sock, token)

    def _finish(self) -> None:
        assert self._loop is not None
        self._scheduled = False
        waiting, self._waiting = self._waiting, []
        for coro, awaited, sock, token in waiting:
            try:
                if not isinstance(awaited, asyncio.Future) or awaited.done():
                    self._step(coro, sock, token)  # a bare yield (sleep(0)) wants a turn
                else:  # not made yet (never seen): resume when it is
                    resume = functools.partial(self._resume, coro, sock, token)
                    awaited.add_done_callback(resume)
            except Exception as exc:  # noqa: BLE001 - one failure must not strand the rest
                self._loop.call_exception_handler(
                    {"message": "finishing an accepted socket's transport failed", "exception": exc}
                )
        self.batch_done()  # what those steps left waiting

    def _resume(
        self, coro: Coroutine[Any, Any, Any], sock: socket.socket, token: Any, _done: object
    ) -> None:
        self._step(coro, sock, token)
        self.batch_done()
