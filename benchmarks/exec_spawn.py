"""How to start a program from an event loop: the ways portd could have done it, side by
side on asyncio and uvloop, in interleaved rounds.

Usage: ``python benchmarks/exec_spawn.py [--rounds 5] [--spawns 300] [--concurrency 8]``

Each sample starts ``--spawns`` runs of ``/bin/true`` (stdin, stdout and stderr on
/dev/null), ``--concurrency`` at a time, from a coroutine on the loop, and waits for
each to exit. Measured: spawns per second, the parent's CPU per spawn (every thread of
this process), and the loop's longest stall (a callback scheduled every millisecond:
its worst lateness), which is what every other connection of a server waits through.

* ``create_subprocess_exec``: asyncio's API (on uvloop, libuv's uv_spawn);
* ``posix_spawn on the loop``: ``os.posix_spawn`` plus a pidfd watched by the loop;
* ``Popen in threads``: ``subprocess.Popen`` (vfork) in worker threads, pidfd on the loop;
* ``ctypes posix_spawn in threads``: glibc's posix_spawn through ctypes (what portd
  does, portd.handlers.exec.libc) in worker threads, pidfd on the loop.

``os.posix_spawn`` holds the GIL until the child has exec'd, so it cannot move to a
thread; ctypes and Popen release it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from portd.handlers.exec import libc

PROGRAM = "/bin/true"
ENV = {"PATH": "/usr/bin:/bin"}
THREADS = 4


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def exited(loop: asyncio.AbstractEventLoop, pid: int) -> None:
    """Wait for ``pid`` to exit through a pidfd, then reap it."""
    pidfd = os.pidfd_open(pid)
    done = loop.create_future()
    loop.add_reader(pidfd, done.set_result, None)
    try:
        await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    os.waitpid(pid, 0)  # noqa: ASYNC222 - the pidfd said it exited: this does not block


class Way:
    """One way to spawn: a coroutine that starts one program and waits for its exit."""

    def __init__(self, null: int, pool: ThreadPoolExecutor) -> None:
        self.null, self.pool = null, pool
        self.prepared = libc.Prepared(PROGRAM, [PROGRAM], None) if libc.AVAILABLE else None

    async def create_subprocess_exec(self) -> None:
        null = self.null
        process = await asyncio.create_subprocess_exec(
            PROGRAM, env=ENV, stdin=null, stdout=null, stderr=null
        )
        await process.wait()

    async def posix_spawn_on_the_loop(self) -> None:
        actions = [(os.POSIX_SPAWN_DUP2, self.null, fd) for fd in (0, 1, 2)]
        # On the loop on purpose: what this way costs the loop is what is measured.
        pid = os.posix_spawn(PROGRAM, [PROGRAM], ENV, file_actions=actions, setsid=True)  # noqa: ASYNC221
        await exited(asyncio.get_running_loop(), pid)

    async def popen_in_threads(self) -> None:
        loop = asyncio.get_running_loop()
        null = self.null

        def start() -> int:
            child = subprocess.Popen([PROGRAM], stdin=null, stdout=null, stderr=null, env=ENV,
                                     start_new_session=True)  # fmt: skip
            child.returncode = 0  # reaped below, through its pidfd
            return child.pid

        await exited(loop, await loop.run_in_executor(self.pool, start))

    async def ctypes_posix_spawn_in_threads(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.prepared is not None
        stdio = (self.null,) * 3
        pid = await loop.run_in_executor(self.pool, self.prepared.spawn, ENV, stdio)
        await exited(loop, pid)


WAYS = ("create_subprocess_exec", "posix_spawn_on_the_loop", "popen_in_threads",
        "ctypes_posix_spawn_in_threads")  # fmt: skip


async def sample(
    start: Callable[[], Awaitable[None]], spawns: int, concurrency: int
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    stalls = [0.0]
    ticking = True

    def tick(expected: float) -> None:
        stalls[0] = max(stalls[0], loop.time() - expected)
        if ticking:
            loop.call_at(expected + 0.001, tick, expected + 0.001)

    loop.call_soon(tick, loop.time())
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await start()

    cpu_from, began = cpu_s(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(spawns)))
    seconds = time.perf_counter() - began
    ticking = False
    return {
        "rate": spawns / seconds,
        "cpu_us": 1e6 * (cpu_s() - cpu_from) / spawns,
        "stall_ms": 1000 * stalls[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--spawns", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    import uvloop

    loops = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    results: dict[str, list[dict[str, float]]] = {}
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    load_before = os.getloadavg()
    with ThreadPoolExecutor(THREADS) as pool:
        way = Way(null, pool)
        names = [(loop, name) for loop in loops for name in WAYS]
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for loop_name, name in names[shift:] + names[:shift]:
                with asyncio.Runner(loop_factory=loops[loop_name]) as runner:
                    got = runner.run(sample(getattr(way, name), args.spawns, args.concurrency))
                results.setdefault(f"{loop_name:8} {name}", []).append(got)
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    print(f"\n{args.spawns} x {PROGRAM}, {args.concurrency} at a time, {args.rounds} rounds "
          f"(medians; spread = (max - min) / median of the rate); {os.cpu_count()} cores, "
          f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")  # fmt: skip
    print(f"  {'loop and way':44}{'spawns/s':>10}{'spread':>8}{'cpu us':>8}{'stall ms':>10}")
    for key, samples in results.items():
        rates = [s["rate"] for s in samples]
        rate = statistics.median(rates)
        spread = (max(rates) - min(rates)) / rate
        cpu = statistics.median(s["cpu_us"] for s in samples)
        stall = statistics.median(s["stall_ms"] for s in samples)
        print(f"  {key:44}{rate:>10.0f}{spread:>8.0%}{cpu:>8.0f}{stall:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
