"""A program per connection: portd's exec handler against socat ``EXEC:`` and ucspi-tcp's
``tcpserver``, side by side in one run.

Usage: ``python benchmarks/programs.py [--rounds N] [--duration S] [--json FILE]``

Three benchmarks, each sample ``--duration`` seconds after a warm-up:

* **exec-true**: sessions per second, CONCURRENCY in flight from one client process:
  connect, half-close, read until the server closes (the program has exited), close.
  The program is ``/bin/true``.
* **exec-cat64**: the same with 64 bytes sent and echoed by ``cat``.
* **exec-throughput**: MB/s echoed through ``cat`` over one connection (clients.py's
  throughput load: a thread writes 64 KiB blocks, the other reads the echo).

The servers, each kept for all rounds, each binding a port the runner holds (a bound,
not listening, SO_REUSEADDR socket keeps every other bind() off the number until the
server answers):

* **portd**: ``portd serve`` with one exec listener, log level warning; the program
  gets the socket as stdin and stdout. **portd-relay**: the same with ``relay = true``
  (portd carries the bytes through pipes), throughput only, for what relaying costs.
* **socat**: ``TCP-LISTEN:P,fork,reuseaddr,backlog=1024 EXEC:PROG``: socat forks per
  connection, forks again for the program and relays between the socket and a
  socketpair; for throughput ``EXEC:cat,nofork`` (the program gets the socket, as
  portd's does; the target's peer).
* **tcpserver**: ``tcpserver -RHl0 -b1024 -c1000 127.0.0.1 P PROG``: a fork and exec per
  connection, the socket as the program's stdin and stdout.

Targets: sessions/s >= 1.5x socat and >= 1.0x tcpserver; throughput >= 0.9x socat
``EXEC:cat,nofork``. The machine's load average before and after and each server's
spread (max - min over the median) are printed: on a shared machine, read the paired
ratios (the per-round ratios' median) before single figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from loads import CpuSampler, run_clients
from model import Benchmark, BenchmarkError, Comparison, Measure, Sample, Settings
from report import BenchmarkResult, print_results, results_document, save_results
from servers import HOST, READY_TIMEOUT_S, Server, ServerError, ServerSpec, launch, portd_argv

CONCURRENCY = 8
DEFAULT_ROUNDS = 5
DEFAULT_DURATION_S = 3.0
WARMUP_S = 0.5
PROBE_INTERVAL_S = 0.02
SOCAT_LISTEN = "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,backlog=1024"


def _spec(name: str) -> ServerSpec:
    # Server.cpu_s and launch need a ServerSpec; only servers.start_server reads its
    # program, which is not used here.
    return ServerSpec(name, "reference")


def portd_command(workdir: Path, port: int, program: list[str], relay: bool) -> list[str]:
    config = workdir / f"exec-{port}.toml"
    words = ", ".join(f'"{word}"' for word in program)
    config.write_text(
        '[daemon]\nshutdown_timeout_s = 1\n\n[[listener]]\nname = "run"\n'
        f'bind = "{HOST}:{port}"\nhandler = "exec"\ncommand = [{words}]\n'
        f"relay = {'true' if relay else 'false'}\nmax_connections = 1000\n",
        encoding="utf-8",
    )
    return portd_argv(config, "warning")


def socat_command(port: int, program: list[str], nofork: bool = False) -> list[str]:
    target = "EXEC:" + " ".join(program) + (",nofork" if nofork else "")
    return ["socat", SOCAT_LISTEN.format(port=port), target]


def tcpserver_command(port: int, program: list[str]) -> list[str]:
    return ["tcpserver", "-R", "-H", "-l", "0", "-b", "1024", "-c", "1000", HOST, str(port),
            *program]  # fmt: skip


Command = Callable[[Path, int], list[str]]


def commands(program: list[str]) -> dict[str, Command]:
    """Every server of a session benchmark running ``program``."""
    return {
        "portd": lambda workdir, port: portd_command(workdir, port, program, relay=False),
        "socat": lambda _workdir, port: socat_command(port, program),
        "tcpserver": lambda _workdir, port: tcpserver_command(port, program),
    }


CAT = ["cat"]
THROUGHPUT_COMMANDS: dict[str, Command] = {
    "portd": lambda workdir, port: portd_command(workdir, port, CAT, relay=False),
    "portd-relay": lambda workdir, port: portd_command(workdir, port, CAT, relay=True),
    "socat-nofork": lambda _workdir, port: socat_command(port, CAT, nofork=True),
    "tcpserver": lambda _workdir, port: tcpserver_command(port, CAT),
}


def start(name: str, command: Command, workdir: Path, probe: bytes) -> Server:
    """Start a server on a port held for it; return it once a session goes through.

    Raises:
        ServerError: it exited or did not answer within READY_TIMEOUT_S.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hold:
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hold.bind((HOST, 0))
        port = hold.getsockname()[1]
        server = launch(_spec(name), command(workdir, port), stdout=subprocess.DEVNULL)
        server.port = port
        try:
            _wait_until_served(server, probe)
        except BaseException:
            server.stop()
            raise
    return server


def _wait_until_served(server: Server, probe: bytes) -> None:
    """Poll with a session (``probe`` sent, the same or nothing back) until one works."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        server.check_alive()
        with contextlib.suppress(OSError):
            if _session(server.port, probe) in (probe, b""):
                return
        if time.monotonic() > deadline:
            raise ServerError(f"{server.name} did not answer on port {server.port}")
        time.sleep(PROBE_INTERVAL_S)  # spacing the probes, not a readiness wait


def _session(port: int, data: bytes) -> bytes:
    with socket.create_connection((HOST, port), timeout=1) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def session_benchmark(name: str, title: str, program: list[str], send: int) -> Benchmark:
    """Sessions per second against portd, socat and tcpserver running ``program``."""
    servers = commands(program)

    @contextlib.contextmanager
    def session(settings: Settings) -> Iterator[Measure]:
        with contextlib.ExitStack() as stack:
            running: dict[str, Server] = {}
            for server_name, command in servers.items():
                server = start(server_name, command, settings.workdir, b"x" * send)
                stack.callback(server.stop)
                running[server_name] = server

            def measure(server_name: str) -> Sample:
                extra = ("--concurrency", str(CONCURRENCY), "--send", str(send),
                         "--expect", str(send))  # fmt: skip
                return _load(running[server_name], settings, "sessions", extra, "completed")

            yield measure

    return Benchmark(
        name=name, title=title, unit="conn/s", higher_is_better=True,
        servers=tuple(servers), session=session,
        comparisons=(Comparison("portd", "socat", 1.5), Comparison("portd", "tcpserver", 1.0)),
    )  # fmt: skip


def _load(
    server: Server, settings: Settings, kind: str, extra: tuple[str, ...], counted: str
) -> Sample:
    server.check_alive()
    with CpuSampler(server) as cpu:
        (result,) = run_clients(kind, server, 1, settings, *extra)
    server.check_alive()
    if result.get("errors"):
        raise BenchmarkError(f"{result['errors']} sessions failed against {server.name}")
    start, end = result["window"]
    seconds = end - start
    amount = result[counted] if counted != "mb_per_s" else result["mb_per_s"] * seconds
    rate = amount / seconds
    server_pct = cpu.percent(start, end)
    return Sample(rate, {
        "server_cpu_pct": server_pct,
        "server_cpu_us_per_op": 1e4 * server_pct / rate if rate else 0.0,
        "client_cpu_pct": 100 * result["cpu_s"] / seconds,
    })  # fmt: skip


@contextlib.contextmanager
def throughput_session(settings: Settings) -> Iterator[Measure]:
    """One connection through cat per sample."""
    with contextlib.ExitStack() as stack:
        running: dict[str, Server] = {}
        for name, command in THROUGHPUT_COMMANDS.items():
            server = start(name, command, settings.workdir, b"ping")
            stack.callback(server.stop)
            running[name] = server

        def measure(name: str) -> Sample:
            return _load(running[name], settings, "throughput", (), "mb_per_s")

        yield measure


BENCHMARKS = (
    session_benchmark("exec-true", f"/bin/true per connection, {CONCURRENCY} in flight",
                      ["/bin/true"], 0),
    session_benchmark("exec-cat64", f"cat echoing 64 bytes per connection, {CONCURRENCY} in "
                      "flight", ["cat"], 64),
    Benchmark(
        name="exec-throughput", title="cat echoing over one connection", unit="MB/s",
        higher_is_better=True, servers=tuple(THROUGHPUT_COMMANDS), session=throughput_session,
        comparisons=(Comparison("portd", "socat-nofork", 0.9),
                     Comparison("portd", "tcpserver"), Comparison("portd-relay", "portd")),
    ),
)  # fmt: skip


def spread(result: BenchmarkResult) -> list[str]:
    """Each server's (max - min) / median over the rounds: how noisy the machine was."""
    lines = []
    for server, summary in result.summaries.items():
        if summary is not None and summary.median:
            noise = (summary.high - summary.low) / summary.median
            lines.append(f"{result.benchmark.name} {server}: spread {noise:.0%}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the table and the noise, write the JSON."""
    args = _parser().parse_args(argv)
    missing = [tool for tool in ("socat", "tcpserver") if shutil.which(tool) is None]
    if missing:
        print(f"needs {' and '.join(missing)} (apt-get install socat ucspi-tcp)", file=sys.stderr)
        return 69
    from run import run_benchmarks

    results = [BenchmarkResult(bench) for bench in BENCHMARKS if bench.name in args.only]
    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()
    run_benchmarks(results, args.rounds, args.duration, WARMUP_S, "portd-bench-exec-")
    load_after = os.getloadavg()
    print_results("exec", started, args.rounds, results, heading_extra=f", {os.cpu_count()} cores")
    print(f"load average (1, 5, 15 min): before {_loads(load_before)}, after {_loads(load_after)}")
    for result in results:
        print("; ".join(spread(result)))
    loads = {"before": load_before, "after": load_after}
    document = results_document(started, results, load_average=loads)
    save_results(document, started, "exec", args.json)
    return 0


def _loads(values: tuple[float, float, float]) -> str:
    return " ".join(f"{value:.2f}" for value in values)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="default: %(default)s")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, metavar="S",
                        help=f"seconds per sample, after {WARMUP_S:g} s of warm-up")  # fmt: skip
    parser.add_argument("--only", nargs="+", default=[b.name for b in BENCHMARKS],
                        choices=[b.name for b in BENCHMARKS], metavar="NAME")  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON here")
    return parser


if __name__ == "__main__":
    sys.exit(main())
