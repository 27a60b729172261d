"""The forward benchmarks' own load generator: 1-byte ping-pong round-trip times.

Run as ``python benchmarks/forward_clients.py --port N --duration S --warmup S``; it
prints one JSON line: ``p50_us``, ``p99_us``, ``round_trips`` measured after the
warm-up on one connection (TCP_NODELAY), one byte out, one byte back, no pause.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

HOST = "127.0.0.1"


def ping_pong(port: int, duration_s: float, warmup_s: float) -> dict[str, float]:
    """Round trips of one byte; their p50 and p99 in microseconds."""
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    clock = time.perf_counter_ns
    start = clock()
    measured_from = start + int(warmup_s * 1e9)
    deadline = measured_from + int(duration_s * 1e9)
    samples: list[int] = []
    send, recv = sock.send, sock.recv
    now = start
    while now < deadline:
        before = clock()
        send(b"p")
        if not recv(1):
            raise ConnectionError("closed during the run")
        now = clock()
        if before >= measured_from:
            samples.append(now - before)
    sock.close()
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] / 1000,
        "p99_us": samples[int(len(samples) * 0.99)] / 1000,
        "round_trips": len(samples),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args()
    print(json.dumps(ping_pong(args.port, args.duration, args.warmup)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
