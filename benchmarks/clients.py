"""Load generators: each runs as its own process and prints one JSON result on stdout.

Run as ``python benchmarks/clients.py KIND --port N ...`` (or ``--unix PATH`` for a
unix stream socket: throughput and connections; see ``--help``). Running
them as processes keeps them off the runner's GIL and lets several share the load
of one benchmark; each reports its own CPU time so a reader can tell whether the
client, rather than the server, was the bottleneck.

Every generator drives plain sockets with the fewest system calls we could manage
from Python, and stops by itself at its deadline. Results carry the measured
``window`` as CLOCK_MONOTONIC times, which every process on the host shares, so the
runner can match the server's CPU use to exactly that window.
"""

from __future__ import annotations

import argparse
import errno
import json
import resource
import select
import socket
import struct
import sys
import threading
import time
from typing import Any

HOST = "127.0.0.1"
BLOCK_BYTES = 64 * 1024
MESSAGE = b"x" * 64
RECV_BYTES = 1024 * 1024
SOCKET_TIMEOUT_S = 1.0
UDP_TIMEOUT_S = 0.05
CONNECT_PENDING = (errno.EINPROGRESS, errno.EAGAIN, 0)
Target = tuple[socket.AddressFamily, Any]  # the family and what connect() takes


def target_of(port: int | None, path: str | None) -> Target:
    """127.0.0.1:PORT, or the unix socket at PATH."""
    if path is not None:
        return socket.AF_UNIX, path
    return socket.AF_INET, (HOST, port)


def connect_stream(target: Target) -> socket.socket:
    """A connected stream socket with a timeout."""
    family, address = target
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(SOCKET_TIMEOUT_S)
    try:
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def cpu_seconds() -> float:
    """User plus system CPU time used by this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tcp_throughput(target: Target, duration_s: float, warmup_s: float) -> dict[str, Any]:
    """One connection: a thread writes 64 KiB blocks, this thread reads the echo back.

    Returns:
        ``mb_per_s`` echoed (received) after the warm-up, 1 MB = 10**6 bytes.
    """
    sock = connect_stream(target)
    start = time.monotonic()
    deadline = start + warmup_s + duration_s
    writer = threading.Thread(target=_write_blocks, args=(sock, deadline), daemon=True)
    writer.start()
    buffer = memoryview(bytearray(RECV_BYTES))
    received = 0
    measured_from = start + warmup_s
    base: int | None = None
    now = start
    cpu_from = 0.0
    while now < deadline:
        count = sock.recv_into(buffer)
        if not count:
            raise ConnectionError("server closed the connection during the run")
        received += count
        now = time.monotonic()
        if base is None and now >= measured_from:
            base, measured_from, cpu_from = received, now, cpu_seconds()
    elapsed = now - measured_from
    cpu_s = cpu_seconds() - cpu_from
    writer.join(SOCKET_TIMEOUT_S * 2)
    sock.close()
    mb_per_s = (received - (base or 0)) / elapsed / 1e6
    return {
        "mb_per_s": mb_per_s,
        "seconds": elapsed,
        "cpu_s": cpu_s,
        "window": [measured_from, now],
    }


def _write_blocks(sock: socket.socket, deadline: float) -> None:
    block = b"\x00" * BLOCK_BYTES
    try:
        while time.monotonic() < deadline:
            sock.sendall(block)
    except OSError:  # the reader stopped first and closed, or the buffers filled at the end
        return


class _Churn:
    """Keeps ``concurrency`` short connections in flight on one epoll loop.

    Each connection: connect, send MESSAGE, read as many bytes back, then close (or,
    with ``keep``, stay open and idle).
    """

    def __init__(self, target: Target, concurrency: int, keep: bool) -> None:
        self.family, self.address = target
        self.concurrency = concurrency
        self.keep = keep
        self.epoll = select.epoll()
        self.pending: dict[int, tuple[socket.socket, list[int]]] = {}
        self.kept: list[socket.socket] = []
        self.completed = 0
        self.errors = 0

    def open_one(self) -> None:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(self.address)
        if code not in CONNECT_PENDING:
            sock.close()
            self.errors += 1
            return
        fd = sock.fileno()
        self.pending[fd] = (sock, [0])
        # On loopback the handshake is usually done by the time connect() returns, so
        # try the send now and skip one epoll round; EPOLLOUT covers the other case.
        try:
            sock.send(MESSAGE)
        except OSError:
            self.epoll.register(fd, select.EPOLLOUT)
        else:
            self.epoll.register(fd, select.EPOLLIN)

    def on_event(self, fd: int, mask: int) -> None:
        sock, got = self.pending[fd]
        try:
            if mask & (select.EPOLLERR | select.EPOLLHUP) and not mask & select.EPOLLIN:
                self._finish(fd, sock, ok=False)
            elif mask & select.EPOLLOUT:
                sock.send(MESSAGE)
                self.epoll.modify(fd, select.EPOLLIN)
            else:
                data = sock.recv(len(MESSAGE))
                got[0] += len(data)
                if not data or got[0] >= len(MESSAGE):
                    self._finish(fd, sock, ok=bool(data))
        except OSError:  # refused or reset: counted, and the slot is reused
            self._finish(fd, sock, ok=False)

    def _finish(self, fd: int, sock: socket.socket, ok: bool) -> None:
        del self.pending[fd]
        if ok and self.keep:
            self.epoll.unregister(fd)
            self.kept.append(sock)
        else:
            sock.close()  # which also takes it out of the epoll set
        if ok:
            self.completed += 1
        else:
            self.errors += 1

    def run(self, until: float, budget: int | None = None) -> float:
        """Serve events until ``until`` (monotonic), keeping ``concurrency`` in flight.

        Args:
            until: when to stop, even with connections in flight.
            budget: how many connections to open in all; None for no limit. The run
                also ends once the budget is spent and every connection has finished.

        Returns:
            The time it stopped.
        """
        poll, pending = self.epoll.poll, self.pending
        now = time.monotonic()
        while now < until and (pending or budget is None or budget > 0):
            while len(pending) < self.concurrency and (budget is None or budget > 0):
                self.open_one()
                budget = None if budget is None else budget - 1
            for fd, mask in poll(0.1):
                self.on_event(fd, mask)
            now = time.monotonic()
        return now

    def close(self) -> None:
        """Close every socket still open."""
        for sock, _ in self.pending.values():
            sock.close()
        for sock in self.kept:
            sock.close()
        self.epoll.close()


class _Sessions(_Churn):
    """Keeps ``concurrency`` short sessions in flight: connect, send ``send`` bytes and
    half-close, read until the server closes (a program per connection ends with its
    exit, so a session is complete only then), close. A session that got other than
    ``expect`` bytes, or a reset, is an error."""

    def __init__(self, target: Target, concurrency: int, send: int, expect: int) -> None:
        super().__init__(target, concurrency, keep=False)
        self.message = MESSAGE * (send // len(MESSAGE)) + MESSAGE[: send % len(MESSAGE)]
        self.expect = expect

    def open_one(self) -> None:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(self.address)
        if code not in CONNECT_PENDING:
            sock.close()
            self.errors += 1
            return
        self.pending[sock.fileno()] = (sock, [0])
        self.epoll.register(sock.fileno(), select.EPOLLOUT)

    def on_event(self, fd: int, mask: int) -> None:
        sock, got = self.pending[fd]
        try:
            if mask & select.EPOLLOUT:
                if self.message:
                    sock.send(self.message)  # 64 bytes: the empty buffer takes them whole
                sock.shutdown(socket.SHUT_WR)
                self.epoll.modify(fd, select.EPOLLIN)
                return
            data = sock.recv(RECV_BYTES)
            got[0] += len(data)
            if not data:
                self._finish(fd, sock, ok=got[0] == self.expect)
        except OSError:
            self._finish(fd, sock, ok=False)


def tcp_sessions(
    target: Target, duration_s: float, warmup_s: float, concurrency: int, *, send: int, expect: int
) -> dict[str, Any]:
    """Short sessions (see _Sessions), ``concurrency`` at a time, for the duration.

    Returns:
        ``completed`` and ``errors`` counted after the warm-up, and the seconds measured.
    """
    churn = _Sessions(target, concurrency, send, expect)
    began = churn.run(time.monotonic() + warmup_s)
    completed, errors, cpu_from = churn.completed, churn.errors, cpu_seconds()
    ended = churn.run(began + duration_s)
    cpu_s = cpu_seconds() - cpu_from
    churn.close()
    return {
        "completed": churn.completed - completed,
        "errors": churn.errors - errors,
        "seconds": ended - began,
        "cpu_s": cpu_s,
        "window": [began, ended],
    }


def tcp_connections(
    target: Target, duration_s: float, warmup_s: float, concurrency: int
) -> dict[str, Any]:
    """Short connections, ``concurrency`` at a time, for the duration.

    Returns:
        ``completed`` and ``errors`` counted after the warm-up, and the seconds measured.
    """
    churn = _Churn(target, concurrency, keep=False)
    began = churn.run(time.monotonic() + warmup_s)
    completed, errors, cpu_from = churn.completed, churn.errors, cpu_seconds()
    ended = churn.run(began + duration_s)
    cpu_s = cpu_seconds() - cpu_from
    churn.close()
    return {
        "completed": churn.completed - completed,
        "errors": churn.errors - errors,
        "seconds": ended - began,
        "cpu_s": cpu_s,
        "window": [began, ended],
    }


def tcp_idle(port: int, count: int, concurrency: int, timeout_s: float) -> dict[str, Any]:
    """Open ``count`` connections, echo MESSAGE once on each, then keep them idle.

    Prints ``{"event": "ready", ...}`` once every connection has echoed, then holds
    them until stdin closes (the runner measures the server meanwhile).
    """
    raise_nofile_limit(count + 1024)
    churn = _Churn((socket.AF_INET, (HOST, port)), concurrency, keep=True)
    started = time.monotonic()
    ended = churn.run(started + timeout_s, budget=count)
    ready = {
        "event": "ready",
        "connections": churn.completed,
        "errors": churn.errors,
        "seconds": ended - started,
    }
    print(json.dumps(ready), flush=True)
    sys.stdin.read()  # held until the runner closes our stdin
    churn.close()
    return {"connections": churn.completed, "errors": churn.errors}


def raise_nofile_limit(wanted: int) -> None:
    """Raise RLIMIT_NOFILE to ``wanted`` (raising the hard limit too when allowed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def udp_echo(port: int, duration_s: float, warmup_s: float, window: int) -> dict[str, Any]:
    """Round trips of MESSAGE with ``window`` datagrams outstanding on one socket.

    A reply sends the next datagram; when nothing arrives for UDP_TIMEOUT_S the
    outstanding ones count as lost and a fresh window goes out.

    Returns:
        ``replies`` and ``lost`` after the warm-up, and the seconds measured.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((HOST, port))
    # A kernel receive timeout on a blocking socket: one recv() per reply, where
    # settimeout() would add a poll() before each.
    timeout = struct.pack("ll", 0, int(UDP_TIMEOUT_S * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
    start = time.monotonic()
    measured_from = start + warmup_s
    deadline = measured_from + duration_s
    replies = lost = malformed = 0
    base: tuple[int, int, int] | None = None
    cpu_from = 0.0
    size = len(MESSAGE)
    for _ in range(window):
        sock.send(MESSAGE)
    now = start
    while now < deadline:
        try:
            if len(sock.recv(2048)) == size:
                replies += 1
            else:  # two echoes merged into one datagram: not an echo
                malformed += 1
            sock.send(MESSAGE)
        except (BlockingIOError, ConnectionRefusedError):  # timed out, or ICMP unreachable
            lost += window
            for _ in range(window):
                sock.send(MESSAGE)
        now = time.monotonic()
        if base is None and now >= measured_from:
            base, measured_from, cpu_from = (replies, lost, malformed), now, cpu_seconds()
    cpu_s = cpu_seconds() - cpu_from
    sock.close()
    first_replies, first_lost, first_malformed = base or (0, 0, 0)
    return {
        "replies": replies - first_replies,
        "lost": lost - first_lost,
        "malformed": malformed - first_malformed,
        "seconds": now - measured_from,
        "cpu_s": cpu_s,
        "window": [measured_from, now],
    }


def build_parser() -> argparse.ArgumentParser:
    """Arguments for every kind of generator."""
    parser = argparse.ArgumentParser(description="portd benchmark load generators")
    parser.add_argument("kind", choices=("throughput", "connections", "sessions", "idle", "udp"))
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int, help="127.0.0.1:PORT")
    where.add_argument("--unix", metavar="PATH", help="a unix stream socket")
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--count", type=int, default=10_000, help="idle connections")
    parser.add_argument("--window", type=int, default=8, help="UDP datagrams outstanding")
    parser.add_argument("--timeout", type=float, default=60.0, help="idle: time to connect all")
    parser.add_argument("--send", type=int, default=0, help="sessions: bytes sent, then FIN")
    parser.add_argument("--expect", type=int, default=0, help="sessions: bytes to get back")
    return parser


def main() -> int:
    """Run one generator and print its result as one JSON line."""
    args = build_parser().parse_args()
    if args.unix is not None and args.kind in ("idle", "udp"):
        raise SystemExit(f"--unix: {args.kind} runs over IP only")
    target = target_of(args.port, args.unix)
    if args.kind == "throughput":
        result = tcp_throughput(target, args.duration, args.warmup)
    elif args.kind == "connections":
        result = tcp_connections(target, args.duration, args.warmup, args.concurrency)
    elif args.kind == "sessions":
        result = tcp_sessions(
            target,
            args.duration,
            args.warmup,
            args.concurrency,
            send=args.send,
            expect=args.expect,
        )
    elif args.kind == "idle":
        result = tcp_idle(args.port, args.count, args.concurrency, args.timeout)
    else:
        result = udp_echo(args.port, args.duration, args.warmup, args.window)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
