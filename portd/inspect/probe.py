"""Connect attempts and the words for how they end (refused, timed out, no route, ...):
non-blocking TCP connects to many addresses at once, for scan, wait and doctor, and
the same wording for connect's blocking attempts.
"""

from __future__ import annotations

import errno
import itertools
import os
import selectors
import socket
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from portd.endpoints.inet import InetAddress
from portd.errors import PortdError

CONNECTING = frozenset({errno.EINPROGRESS, errno.EAGAIN})
# How an attempt ended, as one word (JSON) and as a phrase a person reads.
OUTCOMES = {
    0: "ok",
    errno.ECONNREFUSED: "refused",
    errno.ETIMEDOUT: "timeout",
    errno.EHOSTUNREACH: "no-route",
    errno.ENETUNREACH: "no-route",
    errno.EPERM: "blocked",
    errno.EACCES: "blocked",
    errno.EADDRNOTAVAIL: "unavailable",
}
HINTS = {
    "refused": "nothing listens there, or a firewall rejects it",
    "timeout": "a firewall drops it, the host is down, or its accept queue is full",
    "no-route": "the host is down, or no route leads there from here",
    "blocked": "this host will not send it (a prohibit route, or an output firewall rule)",
}


class Attempt(NamedTuple):
    """One connect: the address, the errno it ended with (0: connected; ETIMEDOUT also
    when our own deadline passed) and how long it took."""

    target: InetAddress
    error: int
    elapsed_s: float

    @property
    def ok(self) -> bool:
        """It connected."""
        return self.error == 0

    @property
    def outcome(self) -> str:
        """``ok``, ``refused``, ``timeout``, ``no-route``, ``blocked``, ``unavailable`` or
        ``error``."""
        return OUTCOMES.get(self.error, "error")

    def describe(self, timed: bool = False) -> str:
        """``connection refused``, ``timed out after 1 s``, ``no route to host``, ... (with
        ``timed``, success and refusals say how long they took)."""
        if self.ok:
            return f"connected in {format_duration(self.elapsed_s)}"
        if self.error == errno.ETIMEDOUT:
            return f"timed out after {self.elapsed_s:.2g} s" if timed else "timed out"
        words = os.strerror(self.error).lower()
        return f"{words} after {format_duration(self.elapsed_s)}" if timed else words


def format_duration(seconds: float) -> str:
    """``0.2 ms``, ``15 ms``, ``1.5 s``."""
    if seconds < 0.01:  # below 10 ms: tenths of a millisecond
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2g} s"


def attempt_error(exc: OSError) -> int:
    """The errno an exception from connect() stands for (ETIMEDOUT for a timeout)."""
    if isinstance(exc, TimeoutError) and exc.errno is None:
        return errno.ETIMEDOUT
    return exc.errno or errno.EIO


OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})


def _no_descriptors(exc: OSError) -> PortdError:
    from portd.errors import ResourceLimitError

    return ResourceLimitError(
        f"cannot open a socket: {exc.strerror} (raise the limit, ulimit -n, or lower --concurrency)"
    )


def probe_tcp(
    targets: Iterable[InetAddress], timeout_s: float, concurrency: int = 256
) -> Iterator[Attempt]:
    """Try to connect to each target, at most ``concurrency`` at a time.

    Yields:
        An Attempt per target, in the order they end. Every socket is closed before the
        yield.
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
                    yield started
            if not in_flight:
                return
            for attempt in _collect(selector, timeout_s):
                in_flight -= 1
                yield attempt
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        selector.close()


def _start(
    selector: selectors.BaseSelector, target: InetAddress, timeout_s: float
) -> Attempt | None:
    begun = time.monotonic()
    sock = socket.socket(target.family, socket.SOCK_STREAM)
    sock.setblocking(False)
    code = sock.connect_ex(target.sockaddr)
    if code in CONNECTING:
        selector.register(sock, selectors.EVENT_WRITE, (target, begun, begun + timeout_s))
        return None
    sock.close()
    return Attempt(target, code, time.monotonic() - begun)


def _collect(selector: selectors.BaseSelector, timeout_s: float) -> list[Attempt]:
    keys = list(selector.get_map().values())
    now = time.monotonic()
    wait = max(0.0, min(key.data[2] for key in keys) - now) if keys else timeout_s
    done: list[Attempt] = []
    for key, _events in selector.select(wait):
        sock: socket.socket = key.fileobj  # type: ignore[assignment]
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        target, begun, _deadline = key.data
        done.append(Attempt(target, code, time.monotonic() - begun))
        selector.unregister(sock)
        sock.close()
    now = time.monotonic()
    for key in list(selector.get_map().values()):
        target, begun, deadline = key.data
        if deadline <= now:
            selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
            done.append(Attempt(target, errno.ETIMEDOUT, now - begun))
    return done
