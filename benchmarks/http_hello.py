"""http-hello against nginx ``return 200`` and a minimal uvicorn app, under wrk.

Usage: ``python benchmarks/http_hello.py [--rounds N] [--duration S] [--json FILE]``

Two benchmarks, each sample a ``wrk -t1 -c64`` run of ``--duration`` seconds after a
warm-up run, requests/s as wrk reports them:

* **http-keepalive**: 64 keep-alive connections. portd, nginx and uvicorn.
* **http-close**: the same with ``Connection: close`` on every request, so every
  request is a new connection. portd and nginx.
* **http-varied**: keep-alive, every request for a path never asked before (a wrk Lua
  script), so no head repeats: portd's remembered verdicts (KnownHeads) never apply
  and every head goes through the parser. portd and nginx, no target: it shows what
  the verdicts save in http-keepalive.

The servers, kept for all rounds, each on one core's worth of process:

* **portd**: ``portd serve``, one http-hello listener, log level warning (at info it
  writes one ``connection_closed`` line per connection, see the logging benchmark).
* **nginx**: one worker, ``access_log off``, ``return 200 "Hello from portd\\n"`` with
  the same Content-Type, ``keepalive_requests`` raised so it never closes a
  keep-alive connection on its own (its default closes after 1,000 requests).
* **uvicorn**: ``--loop uvloop --http httptools``, access log off, an ASGI function
  that sends the same body and Content-Type: the leanest app uvicorn can serve.

Each server binds a port the runner holds: a bound, not listening, SO_REUSEADDR
socket keeps every other bind() off the number while all three servers (which set
SO_REUSEADDR themselves) bind and listen on it; the hold ends once the server
answers a GET. The name is not ``http.py``: run as a script, that would shadow the
standard library's ``http`` package. Also importable: HTTP_BENCHMARKS for suite.py.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
from model import Benchmark, BenchmarkError, Comparison, Measure, Sample, Session, Settings
from report import BenchmarkResult, print_results, results_document, save_results
from servers import HOST, READY_TIMEOUT_S, Server, ServerError, ServerSpec, launch, portd_argv

BODY = "Hello from portd\n"
CONTENT_TYPE = "text/plain; charset=utf-8"
CONNECTIONS = 64
DEFAULT_ROUNDS = 5
DEFAULT_DURATION_S = 5.0
WARMUP_S = 1.0
PROBE_INTERVAL_S = 0.02
PROBE = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
# Server.cpu_s and launch need a ServerSpec; only start_server() reads its program,
# which is not used here, so the peers are marked as neither portd nor socat.
SPECS = {
    "portd": ServerSpec("portd", "portd"),
    "nginx": ServerSpec("nginx", "reference"),
    "uvicorn": ServerSpec("uvicorn", "reference"),
    "portd-2": ServerSpec("portd-2", "portd"),  # [daemon] workers = 2, one shared socket
    "portd-2-rp": ServerSpec("portd-2-rp", "portd"),  # ... and reuse_port = true
    "nginx-2": ServerSpec("nginx-2", "reference"),  # worker_processes 2, one shared socket
    "nginx-2-rp": ServerSpec("nginx-2-rp", "reference"),  # ... and listen ... reuseport
}
WORKER_CONNECTIONS_THREADS = 2  # wrk threads against two workers: one would be the limit
UVICORN_APP = f'''
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"{CONTENT_TYPE}"), (b"content-length", b"{len(BODY)}")]}})
    await send({{"type": "http.response.body", "body": {BODY.encode()!r}}})
'''
WRK_REQUESTS = re.compile(r"^\s*(\d+) requests in", re.M)
WRK_RATE = re.compile(r"^Requests/sec:\s*([0-9.]+)", re.M)
WRK_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
WRK_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
WRK_P99 = re.compile(r"^\s*99%\s+([0-9.]+)(us|ms|s)\s*$", re.M)
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def portd_command(
    workdir: Path, port: int, workers: int = 1, reuse_port: bool = False
) -> list[str]:
    config = workdir / f"http-hello-{workers}-{int(reuse_port)}.toml"
    config.write_text(
        f'[daemon]\nshutdown_timeout_s = 1\nworkers = {workers}\n\n[[listener]]\nname = "web"\n'
        f'bind = "{HOST}:{port}"\nhandler = "http-hello"\nmax_connections = 10000\n'
        f"reuse_port = {'true' if reuse_port else 'false'}\n",
        encoding="utf-8",
    )
    return portd_argv(config, "warning")


def nginx_command(
    workdir: Path, port: int, workers: int = 1, reuse_port: bool = False
) -> list[str]:
    prefix = workdir / f"nginx-{workers}-{int(reuse_port)}"
    prefix.mkdir(exist_ok=True)
    config = prefix / "nginx.conf"
    reuse = " reuseport" if reuse_port else ""
    config.write_text(
        f"""worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    server {{
        listen {HOST}:{port}{reuse};
        location / {{ default_type "{CONTENT_TYPE}"; return 200 "{BODY.strip()}\\n"; }}
    }}
}}
""",
        encoding="utf-8",
    )
    return ["nginx", "-e", "stderr", "-p", f"{prefix}/", "-c", str(config)]


def uvicorn_command(workdir: Path, port: int) -> list[str]:
    (workdir / "uvicorn_hello.py").write_text(UVICORN_APP, encoding="utf-8")
    return [
        sys.executable, "-m", "uvicorn", "--app-dir", str(workdir), "uvicorn_hello:app",
        "--host", HOST, "--port", str(port), "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


Command = Callable[[Path, int], list[str]]
COMMANDS: dict[str, Command] = {
    "portd": portd_command,
    "nginx": nginx_command,
    "uvicorn": uvicorn_command,
    "portd-2": lambda workdir, port: portd_command(workdir, port, 2),
    "portd-2-rp": lambda workdir, port: portd_command(workdir, port, 2, reuse_port=True),
    "nginx-2": lambda workdir, port: nginx_command(workdir, port, 2),
    "nginx-2-rp": lambda workdir, port: nginx_command(workdir, port, 2, reuse_port=True),
}


def start(name: str, workdir: Path) -> Server:
    """Start ``name`` on a port held for it; return it once it answers a GET.

    Raises:
        ServerError: it exited or did not answer within READY_TIMEOUT_S.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hold:
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hold.bind((HOST, 0))
        port = hold.getsockname()[1]
        server = launch(SPECS[name], COMMANDS[name](workdir, port), stdout=subprocess.DEVNULL)
        server.port = port
        try:
            wait_until_answers(server)
        except BaseException:
            server.stop()
            raise
    return server


def wait_until_answers(server: Server) -> None:
    """Poll with a GET until a 200 comes back (the server's readiness, not a sleep)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        server.check_alive()
        with (
            contextlib.suppress(OSError),
            socket.create_connection((HOST, server.port), timeout=1) as sock,
        ):
            sock.sendall(PROBE)
            if sock.recv(64).startswith(b"HTTP/1.1 200 "):
                return
        if time.monotonic() > deadline:
            raise ServerError(f"{server.name} did not answer on port {server.port}")
        time.sleep(PROBE_INTERVAL_S)


VARIED_SCRIPT = """local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/varied/" .. n)
end
"""


def run_wrk(
    port: int,
    seconds: float,
    close: bool,
    scheme: str = "http",
    threads: int = 1,
    *,
    script: Path | None = None,
) -> dict[str, float]:
    """One wrk run; requests/s, requests, errors, the p99 latency and wrk's CPU seconds
    (``scheme`` https: over TLS, for tls.py; ``script``: a wrk Lua script).

    Raises:
        BenchmarkError: wrk failed, or a response was not a 2xx.
    """
    argv = ["wrk", f"-t{threads}", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency"]
    argv += ["-H", "Connection: close"] if close else []
    argv += ["-s", str(script)] if script is not None else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [*argv, f"{scheme}://{HOST}:{port}/"], capture_output=True, text=True,
        timeout=seconds + 60, check=False,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rate, requests = WRK_RATE.search(done.stdout), WRK_REQUESTS.search(done.stdout)
    if done.returncode != 0 or rate is None or requests is None:
        raise BenchmarkError(f"wrk exited {done.returncode}: {done.stderr[-300:]!r}")
    if non_2xx := WRK_NON_2XX.search(done.stdout):
        raise BenchmarkError(f"{non_2xx[1]} responses were not 2xx")
    errors = WRK_SOCKET_ERRORS.search(done.stdout)
    p99 = WRK_P99.search(done.stdout)
    return {
        "rate": float(rate[1]),
        "requests": float(requests[1]),
        "errors": float(sum(int(n) for n in errors.groups())) if errors else 0.0,
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "p99_ms": float(p99[1]) * UNIT_MS[p99[2]] if p99 else math.nan,
    }


def worker_cpu_s(server: Server) -> list[float]:
    """CPU seconds of each worker of the server, in pid order: the processes under it
    that have none of their own (nginx's workers; portd's, under its spawner)."""
    try:
        tree = psutil.Process(server.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    seconds = []
    for process in sorted(tree, key=lambda process: process.pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            if not process.children():
                times = process.cpu_times()
                seconds.append(times.user + times.system)
    return seconds


def balance(before: list[float], after: list[float]) -> float:
    """How evenly the workers worked over a sample: the least busy one's CPU over the
    busiest one's (1.0: even; nan for a server without several workers)."""
    spent = [end - start for start, end in zip(before, after, strict=False)]
    if len(spent) < 2 or max(spent) <= 0:
        return math.nan
    return min(spent) / max(spent)


def http_session(
    names: tuple[str, ...], close: bool, threads: int = 1, varied: bool = False
) -> Session:
    """A suite.Session: every server started once, one wrk run per sample (``varied``:
    a new path for every request)."""

    @contextlib.contextmanager
    def session(settings: Settings) -> Iterator[Measure]:
        servers: dict[str, Server] = {}
        script = None
        if varied:
            script = settings.workdir / "varied.lua"
            script.write_text(VARIED_SCRIPT, encoding="utf-8")
        try:
            for name in names:
                servers[name] = start(name, settings.workdir)

            def measure(name: str) -> Sample:
                server = servers[name]
                if settings.warmup_s > 0:
                    run_wrk(server.port, settings.warmup_s, close, threads=threads, script=script)
                cpu_before, workers_before = server.cpu_s(), worker_cpu_s(server)
                result = run_wrk(
                    server.port, settings.duration_s, close, threads=threads, script=script
                )
                server_cpu_s = server.cpu_s() - cpu_before
                even = balance(workers_before, worker_cpu_s(server))
                server.check_alive()
                seconds = result["requests"] / result["rate"]
                return Sample(
                    result["rate"],
                    {
                        "server_cpu_pct": 100 * server_cpu_s / seconds,
                        "server_cpu_us_per_op": 1e6 * server_cpu_s / result["requests"],
                        "client_cpu_pct": 100 * result["cpu_s"] / seconds,
                        "socket_errors": result["errors"],
                        "p99_ms": result["p99_ms"],
                        **({} if math.isnan(even) else {"balance": even}),
                    },
                )

            yield measure
        finally:
            for server in servers.values():
                server.stop()

    return session


NOTES = (
    f"wrk -t1 -c{CONNECTIONS}; the value is wrk's Requests/sec; srv us/op is the server's "
    "CPU per request (all its processes), the steadier figure on a shared machine",
    "portd at log level warning; nginx: 1 worker, access_log off; uvicorn: uvloop + "
    "httptools, access log off",
)
HTTP_KEEPALIVE = Benchmark(
    name="http-keepalive",
    title=f"GET over {CONNECTIONS} keep-alive connections",
    unit="req/s",
    higher_is_better=True,
    servers=("portd", "nginx", "uvicorn"),
    session=http_session(("portd", "nginx", "uvicorn"), close=False),
    comparisons=(Comparison("portd", "nginx", 0.95), Comparison("portd", "uvicorn", 3.5)),
    notes=NOTES,
)
HTTP_CLOSE = Benchmark(
    name="http-close",
    title=f"GET with Connection: close, {CONNECTIONS} at a time",
    unit="req/s",
    higher_is_better=True,
    servers=("portd", "nginx"),
    session=http_session(("portd", "nginx"), close=True),
    comparisons=(Comparison("portd", "nginx", 0.95),),
    notes=NOTES,
)
HTTP_VARIED = Benchmark(
    name="http-varied",
    title=f"GET over {CONNECTIONS} keep-alive connections, a new path every request",
    unit="req/s",
    higher_is_better=True,
    servers=("portd", "nginx"),
    session=http_session(("portd", "nginx"), close=False, varied=True),
    comparisons=(Comparison("portd", "nginx"),),
    notes=(*NOTES, "http-varied: wrk -s with a Lua script that asks /varied/N, N = 1, 2, ..."),
)
WORKER_SERVERS = ("portd-2", "portd-2-rp", "nginx-2", "nginx-2-rp")
WORKER_NOTES = (
    f"wrk -t{WORKER_CONNECTIONS_THREADS} -c{CONNECTIONS}: client and both workers share "
    "the two cores, so compare srv us/op (server CPU per request) as well as the rate",
    "-2: two workers on one shared socket; -2-rp: reuse_port (portd) / listen reuseport "
    "(nginx), a socket per worker; balance = the least busy worker's CPU / the busiest's",
)
HTTP_WORKERS_KEEPALIVE = Benchmark(
    name="http-workers-keepalive",
    title=f"GET over {CONNECTIONS} keep-alive connections, two workers each",
    unit="req/s",
    higher_is_better=True,
    servers=WORKER_SERVERS,
    session=http_session(WORKER_SERVERS, close=False, threads=WORKER_CONNECTIONS_THREADS),
    comparisons=(Comparison("portd-2", "nginx-2"), Comparison("portd-2-rp", "nginx-2-rp")),
    notes=WORKER_NOTES,
)
HTTP_WORKERS_CLOSE = Benchmark(
    name="http-workers-close",
    title=f"GET with Connection: close, {CONNECTIONS} at a time, two workers each",
    unit="req/s",
    higher_is_better=True,
    servers=WORKER_SERVERS,
    session=http_session(WORKER_SERVERS, close=True, threads=WORKER_CONNECTIONS_THREADS),
    comparisons=(Comparison("portd-2", "nginx-2"), Comparison("portd-2-rp", "nginx-2-rp")),
    notes=WORKER_NOTES,
)
HTTP_BENCHMARKS = (HTTP_KEEPALIVE, HTTP_CLOSE, HTTP_VARIED)
WORKER_BENCHMARKS = (HTTP_WORKERS_KEEPALIVE, HTTP_WORKERS_CLOSE)


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the table, write the JSON."""
    args = _parser().parse_args(argv)
    from run import run_benchmarks

    chosen = [*HTTP_BENCHMARKS, *(WORKER_BENCHMARKS if args.workers else ())]
    results = [
        BenchmarkResult(bench) for bench in chosen if not args.only or bench.name in args.only
    ]
    started = datetime.datetime.now(datetime.UTC)
    run_benchmarks(results, args.rounds, args.duration, WARMUP_S, "portd-bench-http-")
    notes = dict.fromkeys(n for result in results for n in result.benchmark.notes)
    print_results("http-hello", started, args.rounds, results, notes=notes)
    save_results(results_document(started, results), started, "http-hello", args.json)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="default: %(default)s")
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        metavar="S",
        help=f"seconds per wrk sample, after {WARMUP_S:g} s of warm-up (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON here")
    parser.add_argument("--workers", action="store_true",
                        help="also run the two-worker benchmarks (portd and nginx, each with "
                        "one shared socket and with a socket per worker)")  # fmt: skip
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these benchmarks")
    return parser


if __name__ == "__main__":
    sys.exit(main())
