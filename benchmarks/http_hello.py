"""http-hello against nginx ``return 200`` and a minimal uvicorn app, under wrk.

Usage: ``python benchmarks/http_hello.py [--rounds N] [--duration S] [--json FILE]``

Two benchmarks, each sample a ``wrk -t1 -c64`` run of ``--duration`` seconds after a
warm-up run, requests/s as wrk reports them:

* **http-keepalive**: 64 keep-alive connections. portd, nginx and uvicorn.
* **http-close**: the same with ``Connection: close`` on every request, so every
  request is a new connection. portd and nginx.

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
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from model import Benchmark, BenchmarkError, Comparison, Measure, Sample, Session, Settings
from report import BenchmarkResult, format_table, save_results, to_json
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
}
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


def portd_command(workdir: Path, port: int) -> list[str]:
    config = workdir / "http-hello.toml"
    config.write_text(
        '[daemon]\nshutdown_timeout_s = 1\n\n[[listener]]\nname = "web"\n'
        f'bind = "{HOST}:{port}"\nhandler = "http-hello"\n',
        encoding="utf-8",
    )
    return portd_argv(config, "warning")


def nginx_command(workdir: Path, port: int) -> list[str]:
    prefix = workdir / "nginx"
    prefix.mkdir(exist_ok=True)
    config = prefix / "nginx.conf"
    config.write_text(
        f"""worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    server {{
        listen {HOST}:{port};
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


COMMANDS = {"portd": portd_command, "nginx": nginx_command, "uvicorn": uvicorn_command}


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


def run_wrk(port: int, seconds: float, close: bool, scheme: str = "http") -> dict[str, float]:
    """One wrk run; requests/s, requests, errors and wrk's CPU seconds (``scheme``
    https: over TLS, for tls.py).

    Raises:
        BenchmarkError: wrk failed, or a response was not a 2xx.
    """
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s"]
    argv += ["-H", "Connection: close"] if close else []
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
    return {
        "rate": float(rate[1]),
        "requests": float(requests[1]),
        "errors": float(sum(int(n) for n in errors.groups())) if errors else 0.0,
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }


def http_session(names: tuple[str, ...], close: bool) -> Session:
    """A suite.Session: every server started once, one wrk run per sample."""

    @contextlib.contextmanager
    def session(settings: Settings) -> Iterator[Measure]:
        servers: dict[str, Server] = {}
        try:
            for name in names:
                servers[name] = start(name, settings.workdir)

            def measure(name: str) -> Sample:
                server = servers[name]
                if settings.warmup_s > 0:
                    run_wrk(server.port, settings.warmup_s, close)
                cpu_before = server.cpu_s()
                result = run_wrk(server.port, settings.duration_s, close)
                server_cpu_s = server.cpu_s() - cpu_before
                server.check_alive()
                seconds = result["requests"] / result["rate"]
                return Sample(
                    result["rate"],
                    {
                        "server_cpu_pct": 100 * server_cpu_s / seconds,
                        "server_cpu_us_per_op": 1e6 * server_cpu_s / result["requests"],
                        "client_cpu_pct": 100 * result["cpu_s"] / seconds,
                        "socket_errors": result["errors"],
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
    comparisons=(Comparison("portd", "nginx", 0.8), Comparison("portd", "uvicorn", 3.5)),
    notes=NOTES,
)
HTTP_CLOSE = Benchmark(
    name="http-close",
    title=f"GET with Connection: close, {CONNECTIONS} at a time",
    unit="req/s",
    higher_is_better=True,
    servers=("portd", "nginx"),
    session=http_session(("portd", "nginx"), close=True),
    comparisons=(Comparison("portd", "nginx", 0.85),),
    notes=NOTES,
)
HTTP_BENCHMARKS = (HTTP_KEEPALIVE, HTTP_CLOSE)


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the table, write the JSON."""
    args = _parser().parse_args(argv)
    from run import run_benchmark

    results = [BenchmarkResult(bench) for bench in HTTP_BENCHMARKS]
    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="portd-bench-http-") as workdir:
        settings = Settings(args.duration, WARMUP_S, Path(workdir))
        for result in results:
            run_benchmark(result, args.rounds, settings)
            result.finish()
    print(f"\nportd http-hello benchmarks, {started:%Y-%m-%d %H:%M} UTC: {args.rounds} rounds")
    print("ratio = median / median; paired = median of the per-round ratios.\n")
    print(format_table(results))
    for note in NOTES:
        print(f"note: {note}")
    document = {
        "started": started.isoformat(),
        "benchmarks": {result.benchmark.name: to_json(result) for result in results},
    }
    save_results(document, started, "http-hello", args.json)
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
    return parser


if __name__ == "__main__":
    sys.exit(main())
