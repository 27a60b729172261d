"""Load benchmarks: servers kept for every round, clients.py processes as the load.

Each sample runs one or more load generators against a server and reads the server's
CPU use over exactly the window the generators measured.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from model import BenchmarkError, Measure, Sample, Session, Settings
from processes import spawn
from servers import HERE, Server, ServerSpec, start_server

CLIENT_SCRIPT = HERE / "clients.py"
CLIENT_GRACE_S = 15.0  # on top of warm-up + duration: process start-up and teardown
CONNECTION_CLIENTS = 2  # processes sharing the 64 connections (32 each)
CONCURRENT_CONNECTIONS = 64
UDP_WINDOW = 8
CPU_SAMPLE_INTERVAL_S = 0.05


def run_clients(
    kind: str, server: Server, processes: int, settings: Settings, *extra: str
) -> list[Any]:
    """Run ``processes`` copies of one load generator against ``server`` at once; return
    their results.

    Raises:
        BenchmarkError: a generator failed or overran its time.
    """
    argv = [sys.executable, str(CLIENT_SCRIPT), kind, *server.target]
    argv += ["--duration", str(settings.duration_s), "--warmup", str(settings.warmup_s), *extra]
    deadline = time.monotonic() + settings.warmup_s + settings.duration_s + CLIENT_GRACE_S
    pipes = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    procs = [spawn(argv, **pipes) for _ in range(processes)]

    try:
        return [_result(proc, deadline - time.monotonic()) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _result(proc: subprocess.Popen[bytes], timeout_s: float) -> Any:
    try:
        out, err = proc.communicate(timeout=max(timeout_s, 0.1))
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"load generator overran by {CLIENT_GRACE_S:.0f}s") from exc
    if proc.returncode != 0:
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["(no message)"]
        raise BenchmarkError(f"load generator exited {proc.returncode}: {last[0]}")
    return json.loads(out.splitlines()[-1])


class CpuSampler:
    """Samples a server's CPU seconds in a thread, to read its use over any window later.

    The clients report their measured window in CLOCK_MONOTONIC time, which this
    process shares, so server and client CPU cover the same stretch of time.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self.points: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> CpuSampler:
        self.points.append((time.monotonic(), self.server.cpu_s()))
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.points.append((time.monotonic(), self.server.cpu_s()))

    def _sample(self) -> None:
        while not self._stop.wait(CPU_SAMPLE_INTERVAL_S):
            self.points.append((time.monotonic(), self.server.cpu_s()))

    def percent(self, start: float, end: float) -> float:
        """CPU used between two monotonic times, in % of one core (interpolated)."""
        return 100 * (self._cpu_at(end) - self._cpu_at(start)) / (end - start)

    def _cpu_at(self, when: float) -> float:
        points = self.points
        index = min(max(bisect.bisect_left(points, (when, -1.0)), 1), len(points) - 1)
        (t0, c0), (t1, c1) = points[index - 1], points[index]
        return c0 + (c1 - c0) * (when - t0) / (t1 - t0) if t1 > t0 else c1


@contextlib.contextmanager
def load_session(
    specs: tuple[ServerSpec, ...], settings: Settings, sample: Callable[[Server], Sample]
) -> Iterator[Measure]:
    """Start every server once, keep them for all rounds, stop them all at the end.

    ``sample`` returns the client results' measured window in details["window_start"]
    and details["window_end"]; the server's CPU use is read over that window.
    """
    with contextlib.ExitStack() as stack:
        servers: dict[str, Server] = {}
        for spec in specs:
            server = start_server(spec, settings.workdir)
            stack.callback(server.stop)
            servers[spec.name] = server

        def measure(name: str) -> Sample:
            server = servers[name]
            server.check_alive()
            with CpuSampler(server) as cpu:
                result = sample(server)
            server.check_alive()
            details = dict(result.details)
            start, end = details.pop("window_start"), details.pop("window_end")
            details["server_cpu_pct"] = cpu_pct = cpu.percent(start, end)
            # Server CPU per unit of the rate (per MB, connection, round trip): what
            # the server spent, readable even when the client set the pace.
            if result.value > 0:
                details["server_cpu_us_per_op"] = cpu_pct / 100 / result.value * 1e6
            return Sample(result.value, details)

        yield measure


def _window(results: list[Any]) -> dict[str, float]:
    """The stretch of time every client measured (they start within milliseconds)."""
    return {
        "window_start": max(r["window"][0] for r in results),
        "window_end": min(r["window"][1] for r in results),
    }


def _client_cpu_pct(results: list[Any]) -> float:
    """Client CPU in the measured window, in % of one core, summed over processes."""
    return float(sum(100 * r["cpu_s"] / r["seconds"] for r in results))


def throughput_session(
    specs: tuple[ServerSpec, ...],
) -> Session:
    """Stream echo throughput over one connection (TCP, or a unix socket) with 64 KiB
    writes, in MB/s echoed."""

    def session(settings: Settings) -> contextlib.AbstractContextManager[Measure]:
        def sample(server: Server) -> Sample:
            (result,) = run_clients("throughput", server, 1, settings)
            details = {"client_cpu_pct": _client_cpu_pct([result]), **_window([result])}
            return Sample(result["mb_per_s"], details)

        return load_session(specs, settings, sample)

    return session


def connections_session(specs: tuple[ServerSpec, ...]) -> Session:
    """64 concurrent short connections (connect, 64 bytes there and back, close) per second."""

    def session(settings: Settings) -> contextlib.AbstractContextManager[Measure]:
        def sample(server: Server) -> Sample:
            per_client = str(CONCURRENT_CONNECTIONS // CONNECTION_CLIENTS)
            results = run_clients(
                "connections",
                server,
                CONNECTION_CLIENTS,
                settings,
                "--concurrency",
                per_client,
            )
            seconds = sum(r["seconds"] for r in results) / len(results)
            details = {
                "errors": float(sum(r["errors"] for r in results)),
                "client_cpu_pct": _client_cpu_pct(results),
                **_window(results),
            }
            return Sample(sum(r["completed"] for r in results) / seconds, details)

        return load_session(specs, settings, sample)

    return session


def udp_session(specs: tuple[ServerSpec, ...]) -> Session:
    """UDP 64-byte echo round trips per second, UDP_WINDOW outstanding."""

    def session(settings: Settings) -> contextlib.AbstractContextManager[Measure]:
        def sample(server: Server) -> Sample:
            (result,) = run_clients("udp", server, 1, settings, "--window", str(UDP_WINDOW))
            details = {
                "lost": float(result["lost"]),
                "malformed": float(result["malformed"]),
                "client_cpu_pct": _client_cpu_pct([result]),
                **_window([result]),
            }
            return Sample(result["replies"] / result["seconds"], details)

        return load_session(specs, settings, sample)

    return session
