"""Test-server start-up: portd.testing's serve() (sync and async) against pytest-httpserver.

Usage: ``python benchmarks/fixtures.py [--starts N] [--json FILE]``

Each sample is one server from nothing to ready: for serve(), the time until its
``with`` (or ``async with``) block starts, which is when the listener accepts; for
pytest-httpserver, ``HTTPServer(port=0)`` plus ``start()``, which is what its
``make_httpserver`` fixture does (it returns once werkzeug's socket listens). Every
server then answers one GET (outside the timed part) to prove it was ready, and is
stopped, timed too. Stopping right after a request is werkzeug's best case (its
serve_forever looks at the stop flag after each request, else every 0.5 s), so
IDLE_STOPS more servers of each kind are stopped without having served anything
("idle stop"). The first start of each kind (imports) is reported apart from the
rest. Target: p95 <= 50 ms for serve().
Results go to stdout as a table and to benchmarks/results/ as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import http.client
import importlib
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from report import save_results

DEFAULT_STARTS = 200
IDLE_STOPS = 5
P95_TARGET_MS = 50.0


@dataclass(slots=True)
class Timings:
    """One kind of server: cold start, then warm start and stop times in ms."""

    name: str
    target_ms: float | None
    cold_ms: float = 0.0
    starts_ms: list[float] = field(default_factory=list)
    stops_ms: list[float] = field(default_factory=list)
    idle_stops_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Median, p95 and max of the warm starts and of the stops."""
        return {
            "name": self.name,
            "cold_ms": round(self.cold_ms, 3),
            "start_median_ms": round(statistics.median(self.starts_ms), 3),
            "start_p95_ms": round(percentile(self.starts_ms, 95), 3),
            "start_max_ms": round(max(self.starts_ms), 3),
            "stop_median_ms": round(statistics.median(self.stops_ms), 3),
            "stop_p95_ms": round(percentile(self.stops_ms, 95), 3),
            "idle_stop_median_ms": round(statistics.median(self.idle_stops_ms), 3),
            "n": len(self.starts_ms),
            "target": f"p95 <= {self.target_ms:g} ms" if self.target_ms else "",
            "result": self.verdict(),
        }

    def verdict(self) -> str:
        """PASS or FAIL against the target; empty without one."""
        if self.target_ms is None:
            return ""
        return "PASS" if percentile(self.starts_ms, 95) <= self.target_ms else "FAIL"


def percentile(values: list[float], pct: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def get(host: str, port: int) -> int:
    """One GET; the status (proof that the server serves)."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/", headers={"Connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def measure_sync(starts: int) -> Timings:
    """serve("http-hello") as a sync context manager (background thread)."""
    from portd.testing import serve

    timings = Timings("serve() sync", P95_TARGET_MS)
    for index in range(starts + 1 + IDLE_STOPS):
        began = time.perf_counter()
        context = serve("http-hello")
        server = context.__enter__()
        ready = time.perf_counter()
        if index <= starts:
            assert get(server.host, server.port) == 200
        stopping = time.perf_counter()
        context.__exit__(None, None, None)
        _record(timings, index, starts, ready - began, time.perf_counter() - stopping)
    return timings


def measure_async(starts: int) -> Timings:
    """serve("http-hello") as an async context manager, on one asyncio loop."""
    from portd.testing import serve

    timings = Timings("serve() async", P95_TARGET_MS)

    async def run() -> None:
        for index in range(starts + 1 + IDLE_STOPS):
            began = time.perf_counter()
            context = serve("http-hello")
            server = await context.__aenter__()
            ready = time.perf_counter()
            if index <= starts:
                assert await asyncio.to_thread(get, server.host, server.port) == 200
            stopping = time.perf_counter()
            await context.__aexit__(None, None, None)
            _record(timings, index, starts, ready - began, time.perf_counter() - stopping)

    asyncio.run(run())
    return timings


def measure_httpserver(starts: int) -> Timings | None:
    """pytest-httpserver's HTTPServer as its fixture starts it; None if not installed."""
    try:
        module: Any = importlib.import_module("pytest_httpserver")
    except ImportError:
        return None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    timings = Timings("pytest-httpserver", None)
    for index in range(starts + 1 + IDLE_STOPS):
        began = time.perf_counter()
        server = module.HTTPServer(host="127.0.0.1", port=0)
        server.start()
        ready = time.perf_counter()
        if index <= starts:  # no handler is set up: it answers 500, which proves it serves
            assert get("127.0.0.1", server.port) == 500
        stopping = time.perf_counter()
        server.stop()
        _record(timings, index, starts, ready - began, time.perf_counter() - stopping)
    return timings


def _record(timings: Timings, index: int, starts: int, start_s: float, stop_s: float) -> None:
    if index == 0:
        timings.cold_ms = start_s * 1000
    elif index <= starts:
        timings.starts_ms.append(start_s * 1000)
        timings.stops_ms.append(stop_s * 1000)
    else:
        timings.idle_stops_ms.append(stop_s * 1000)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Aligned columns."""
    header = (
        "server", "cold ms", "start median", "start p95", "start max", "stop median",
        "stop p95", "idle stop", "n", "target", "result",
    )  # fmt: skip
    keys = (
        "name", "cold_ms", "start_median_ms", "start_p95_ms", "start_max_ms", "stop_median_ms",
        "stop_p95_ms", "idle_stop_median_ms", "n", "target", "result",
    )  # fmt: skip
    cells = [header] + [
        tuple(f"{row[key]:,.2f}" if isinstance(row[key], float) else str(row[key]) for key in keys)
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=DEFAULT_STARTS, help="default: %(default)s")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON here")
    args = parser.parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    measured: list[Timings] = []
    steps: list[tuple[str, Callable[[int], Timings | None]]] = [
        ("serve() sync", measure_sync),
        ("serve() async", measure_async),
        ("pytest-httpserver", measure_httpserver),
    ]
    for name, step in steps:
        print(f"== {name}: {args.starts} starts", file=sys.stderr)
        result = step(args.starts)
        if result is None:
            print(f"   skipped: {name} is not installed", file=sys.stderr)
            continue
        measured.append(result)
    rows = [timings.summary() for timings in measured]
    print(
        f"\nportd.testing start-to-ready, {started:%Y-%m-%d %H:%M} UTC, {args.starts} starts each"
    )
    print("(after one cold start, reported apart; times in ms)\n")
    print(format_table(rows))
    document = {
        "started": started.isoformat(),
        "starts": args.starts,
        "python": sys.version.split()[0],
        "loadavg_at_end": Path("/proc/loadavg").read_text(encoding="ascii").split()[:3],
        "results": rows,
        "samples": [asdict(timings) for timings in measured],
    }
    save_results(document, started, "fixtures", args.json)
    return 0 if all(timings.verdict() != "FAIL" for timings in measured) else 1


if __name__ == "__main__":
    sys.exit(main())
