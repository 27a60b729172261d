"""Non-blocking TCP connects to many addresses at once (used by ``scan`` and ``wait``)."""

from __future__ import annotations

import errno
import itertools
import os
import selectors
import socket
import time
from collections.abc import Iterable, Iterator

from portd.endpoints.inet import InetAddress
from portd.errors import PortdError

CONNECTING = frozenset({errno.EINPROGRESS, errno.EAGAIN})
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})


def _no_descriptors(exc: OSError) -> PortdError:
    from portd.errors import ResourceLimitError

    return ResourceLimitError(
        f"cannot open a socket: {exc.strerror} (raise the limit, ulimit -n, or lower --concurrency)"
    )


def probe_tcp(
    targets: Iterable[InetAddress], timeout_s: float, concurrency: int = 256
) -> Iterator[tuple[InetAddress, str | None]]:
    """Try to connect to each target, at most ``concurrency`` at a time.

    Yields:
        ``(target, None)`` when it accepted, else ``(target, reason)``: the OS's words
        ("connection refused") or "timed out". Every socket is closed before the yield.
    """
    pending: Iterator[InetAddress] = iter(targets)
    selector = selectors.DefaultSelector()
    in_flight = 0
    try:
        while True:
            while in_flight < concurrency:
                target = next(pending, None)
                if target is None:
                    break
                try:
                    started = _start(selector, target, timeout_s)
                except OSError as exc:
                    if exc.errno not in OUT_OF_DESCRIPTORS or not in_flight:
                        raise _no_descriptors(exc) from None
                    # Out of descriptors: go on with as many as are in flight now.
                    concurrency = in_flight
                    pending = itertools.chain([target], pending)
                    break
                if started is None:
                    in_flight += 1
                else:
                    yield target, started
            if not in_flight:
                return
            for target, reason in _collect(selector, timeout_s):
                in_flight -= 1
                yield target, reason
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        selector.close()


def _start(selector: selectors.BaseSelector, target: InetAddress, timeout_s: float) -> str | None:
    sock = socket.socket(target.family, socket.SOCK_STREAM)
    sock.setblocking(False)
    code = sock.connect_ex(target.sockaddr)
    if code in CONNECTING:
        selector.register(sock, selectors.EVENT_WRITE, (target, time.monotonic() + timeout_s))
        return None
    sock.close()
    return None if code == 0 else _reason(code)


def _collect(
    selector: selectors.BaseSelector, timeout_s: float
) -> list[tuple[InetAddress, str | None]]:
    keys = list(selector.get_map().values())
    now = time.monotonic()
    wait = max(0.0, min(key.data[1] for key in keys) - now) if keys else timeout_s
    done: list[tuple[InetAddress, str | None]] = []
    for key, _events in selector.select(wait):
        sock: socket.socket = key.fileobj  # type: ignore[assignment]
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        done.append((key.data[0], None if code == 0 else _reason(code)))
        selector.unregister(sock)
        sock.close()
    now = time.monotonic()
    for key in list(selector.get_map().values()):
        if key.data[1] <= now:
            selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
            done.append((key.data[0], "timed out"))
    return done


def _reason(code: int) -> str:
    return os.strerror(code).lower()
