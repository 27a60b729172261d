"""Turning an accepted socket into a transport, without a task per connection.

``loop.connect_accepted_socket`` is a coroutine: it makes the transport at once, then
waits for the protocol's ``connection_made`` (scheduled by the loop) before it returns.
Wrapping it in a task per accepted socket, as ``create_task`` would, costs an object, a
loop iteration and a wake-up per connection, the largest share of the accept path
after the kernel's own work. Here the coroutine is stepped directly, the way a task
steps it: the first step runs inside the accept callback, and the rest once the
future it waits on is done.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

# Called once, with None when the transport is made, or the OSError that stopped it.
Adopted = Callable[[OSError | None], None]


def adopt_socket(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.Protocol],
    sock: socket.socket,
    adopted: Adopted,
) -> None:
    """Serve ``sock`` (accepted, blocking or not) with a protocol from ``protocol_factory``.

    The transport owns ``sock`` once made; if making it fails, ``adopted`` gets the
    error and the caller still owns (and closes) the socket.
    """
    _step(loop, loop.connect_accepted_socket(protocol_factory, sock), adopted)


def _step(
    loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], adopted: Adopted
) -> None:
    try:
        waiting = coro.send(None)
    except StopIteration:
        adopted(None)
        return
    except OSError as exc:  # the peer left before the transport was made
        adopted(exc)
        return
    if isinstance(waiting, asyncio.Future):
        waiting.add_done_callback(lambda _: _step(loop, coro, adopted))
    else:  # a bare yield (asyncio.sleep(0)): come back on the next iteration
        loop.call_soon(_step, loop, coro, adopted)
