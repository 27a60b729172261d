"""TLS: portd against nginx (``listen ... ssl``) and socat (``OPENSSL-LISTEN``).

Usage: ``python benchmarks/tls.py [--rounds N] [--duration S] [--only NAME ...] [--json FILE]``

Three benchmarks, the peers interleaved round by round (medians and paired ratios):

* **tls-keepalive**: http-hello over TLS, ``wrk -t1 -c64`` on keep-alive connections
  (handshakes only at the start); requests/s. portd and nginx.
* **tls-handshakes**: full handshakes per second, no session resumption: HANDSHAKE_CLIENTS
  ``openssl s_time -new`` processes side by side, each connecting, doing a full
  handshake (``-new``: never a resumed session), closing, again; connections/s.
  portd and nginx. (With ``-www /`` each connection also waits for a GET: s_time then
  manages ~60 connections a second per process here, with both servers nearly idle.)
* **tls-echo**: echo over one TLS connection, a client writing 64 KiB blocks and
  reading the echo (one thread, non-blocking: an OpenSSL connection must not be used
  from two threads); MB/s echoed. portd and socat.

Every server uses the same ECDSA P-256 certificate (made here with portd.tls.certs)
and OpenSSL's default key exchange groups (X25519 first), TLS 1.2 and 1.3:

* **portd**: ``portd serve`` at log level warning, one listener (http-hello or echo)
  with ``tls_cert``/``tls_key``, uvloop;
* **nginx**: one worker, ``access_log off``, ``listen ... ssl``, the same certificate,
  ``return 200`` with http-hello's body, ``keepalive_requests`` raised (as in
  http_hello.py);
* **socat**: ``socat -b 131072 OPENSSL-LISTEN:P,cert=...,key=...,verify=0,fork EXEC:cat``,
  socat's fastest plaintext echo (see README.md) with TLS on the listening side.

Servers bind a port the runner holds (a bound, not listening SO_REUSEADDR socket) until
they answer over TLS. Needs wrk, nginx-light and socat.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import re
import resource
import select
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

from http_hello import BODY, CONNECTIONS, CONTENT_TYPE, run_wrk
from model import Benchmark, BenchmarkError, Comparison, Measure, Sample, Session, Settings
from report import BenchmarkResult, print_results, results_document, save_results
from servers import HOST, READY_TIMEOUT_S, Server, ServerError, ServerSpec, launch, portd_argv

DEFAULT_ROUNDS = 5
DEFAULT_DURATION_S = 5.0
WARMUP_S = 1.0
HANDSHAKE_CLIENTS = 4
S_TIME_COUNT = re.compile(r"^(\d+) connections in [0-9.]+s;", re.M)
BLOCK = b"x" * (64 * 1024)
IN_FLIGHT_BYTES = 16 << 20  # echo: written but not yet read back, at most
PROBE_INTERVAL_S = 0.02
SPECS = {
    "portd": ServerSpec("portd", "portd"),
    "nginx": ServerSpec("nginx", "reference"),
    "socat": ServerSpec("socat", "socat"),
}


def write_certificate(workdir: Path) -> tuple[Path, Path]:
    """The one certificate every server uses: ECDSA P-256 for 127.0.0.1 and localhost."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from portd.tls.certs import Authority

    issued = Authority("bench CA").issue(["127.0.0.1", "localhost"])
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    cert.write_bytes(issued.cert_pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    return cert, key


def portd_command(workdir: Path, port: int, handler: str) -> list[str]:
    config = workdir / f"tls-{handler}.toml"
    config.write_text(
        f'[daemon]\nshutdown_timeout_s = 1\n\n[[listener]]\nname = "tls"\n'
        f'bind = "{HOST}:{port}"\nhandler = "{handler}"\nmax_connections = 4096\n'
        f'tls_cert = "{workdir}/cert.pem"\ntls_key = "{workdir}/key.pem"\n',
        encoding="utf-8",
    )
    return portd_argv(config, "warning")


def nginx_command(workdir: Path, port: int, handler: str) -> list[str]:
    prefix = workdir / "nginx-tls"
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
        listen {HOST}:{port} ssl;
        ssl_certificate {workdir}/cert.pem;
        ssl_certificate_key {workdir}/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ default_type "{CONTENT_TYPE}"; return 200 "{BODY.strip()}\\n"; }}
    }}
}}
""",
        encoding="utf-8",
    )
    return ["nginx", "-e", "stderr", "-p", f"{prefix}/", "-c", str(config)]


def socat_command(workdir: Path, port: int, handler: str) -> list[str]:
    listen = (
        f"OPENSSL-LISTEN:{port},bind={HOST},reuseaddr,fork,backlog=1024,"
        f"cert={workdir}/cert.pem,key={workdir}/key.pem,verify=0"
    )
    return ["socat", "-b", "131072", listen, "EXEC:cat"]


COMMANDS: dict[str, Callable[[Path, int, str], list[str]]] = {
    "portd": portd_command,
    "nginx": nginx_command,
    "socat": socat_command,
}


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def start(name: str, workdir: Path, handler: str) -> Server:
    """Start ``name`` on a port held for it; return it once it answers over TLS.

    Raises:
        ServerError: it exited or did not answer within READY_TIMEOUT_S.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hold:
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hold.bind((HOST, 0))
        port = hold.getsockname()[1]
        argv = COMMANDS[name](workdir, port, handler)
        server = launch(SPECS[name], argv, stdout=subprocess.DEVNULL)
        server.port = port
        try:
            wait_until_answers(server, handler)
        except BaseException:
            server.stop()
            raise
    return server


def wait_until_answers(server: Server, handler: str) -> None:
    """Poll with a TLS request (a GET, or an echo) until it is answered."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    probe = b"GET / HTTP/1.0\r\n\r\n" if handler == "http-hello" else b"ping"
    while True:
        server.check_alive()
        with contextlib.suppress(OSError):
            raw = socket.create_connection((HOST, server.port), timeout=1)
            with client_context().wrap_socket(raw) as sock:
                sock.sendall(probe)
                answer = sock.recv(64)
                if answer.startswith(b"HTTP/1.1 200 ") or answer == probe:
                    return
        if time.monotonic() > deadline:
            raise ServerError(f"{server.name} did not answer over TLS on port {server.port}")
        time.sleep(PROBE_INTERVAL_S)  # polling a starting server: not a readiness signal


def run_handshakes(port: int, seconds: float) -> dict[str, float]:
    """HANDSHAKE_CLIENTS ``openssl s_time -new`` at once: each connects, does a full
    handshake (``-new``: a session is never resumed), closes, again; connections/s
    over the run, counted from their reports.

    Raises:
        BenchmarkError: a client failed or reported no count.
    """
    argv = ["openssl", "s_time", "-connect", f"{HOST}:{port}", "-new",
            "-time", str(max(1, round(seconds)))]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.monotonic()
    procs = [
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(HANDSHAKE_CLIENTS)
    ]
    outputs = [proc.communicate(timeout=seconds + 60)[0] for proc in procs]
    wall_s = time.monotonic() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = 0
    for proc, output in zip(procs, outputs, strict=True):
        found = S_TIME_COUNT.search(output)
        if proc.returncode != 0 or found is None:
            raise BenchmarkError(f"s_time exited {proc.returncode}: {output[-300:]!r}")
        total += int(found[1])
    return {
        "rate": total / wall_s,
        "requests": float(total),
        "seconds": wall_s,
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }


def _run_clients(mode: str, port: int, seconds: float, count: int) -> list[dict[str, float]]:
    argv = [sys.executable, __file__, mode, str(port), str(seconds), "0"]
    procs = [
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            raise BenchmarkError(f"client exited {proc.returncode}: {err[-300:]!r}")
        results.append(json.loads(out))
    return results


def run_echo_client(port: int, seconds: float, warmup_s: float) -> dict[str, float]:
    """The echo client in its own process; its result."""
    (result,) = _run_clients("--echo-client", port, seconds + warmup_s, 1)
    return result


def echo_client(port: int, seconds: float, warmup_s: float = WARMUP_S) -> dict[str, float]:
    """One TLS connection, one thread: write blocks while at most IN_FLIGHT_BYTES are
    unread, read the echo back; MB/s received after the warm-up (``seconds`` includes it).

    TLS runs on memory BIOs, as the servers' event loops run it, so that the client is
    not what limits the figure. A plain ``SSLSocket`` makes one send per 16 KiB record
    and two reads per record (OpenSSL's read-ahead is off and Python cannot turn it
    on): about 290 system calls per MB against 26 here (strace -c), and it saturated
    its core at ~650 MB/s while the fastest server still had room.
    """
    sock = socket.create_connection((HOST, port), timeout=5)
    tls = TlsPipe(sock)
    tls.handshake()
    sock.setblocking(False)
    sent = received = 0
    start = time.monotonic()
    measured_from, deadline = start + warmup_s, start + seconds
    base: int | None = None
    cpu_from = 0.0
    now = start
    while now < deadline:
        if not tls.outgoing and sent - received < IN_FLIGHT_BYTES:
            sent += tls.write(BLOCK)
        readable, writable, _ = select.select([sock], [sock] if tls.outgoing else [], [], 1.0)
        if writable:
            tls.flush()
        if readable:
            received += tls.read_available()
        now = time.monotonic()
        if base is None and now >= measured_from:
            base, measured_from, cpu_from = received, now, _cpu_s()
    elapsed = now - measured_from
    sock.close()
    return {
        "rate": (received - (base or 0)) / elapsed / 1e6,
        "seconds": elapsed,
        "cpu_s": _cpu_s() - cpu_from,
    }


class TlsPipe:
    """A client TLS connection on memory BIOs over a socket: ciphertext is read and
    sent in large chunks, whatever the record size."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = client_context().wrap_bio(self._incoming, self._outgoing)
        self._ciphertext = bytearray(256 * 1024)
        self._plaintext = bytearray(256 * 1024)  # read(n, buffer): no bytes made per record
        self.outgoing = memoryview(b"")  # ciphertext not yet sent

    def handshake(self) -> None:
        """The handshake, blocking (the socket's timeout bounds each step)."""
        while not self._handshake_step():
            self.sock.sendall(self._outgoing.read())
            count = self.sock.recv_into(self._ciphertext)
            if not count:
                raise ConnectionError("the server closed the connection in the handshake")
            self._incoming.write(memoryview(self._ciphertext)[:count])
        self.sock.sendall(self._outgoing.read())

    def _handshake_step(self) -> bool:
        """Go on with the handshake; whether it is done (False: it needs the server)."""
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    def write(self, data: bytes) -> int:
        """Encrypt ``data`` into ``outgoing``, which must be empty (all sent); its length."""
        self._tls.write(data)
        self.outgoing = memoryview(self._outgoing.read())
        return len(data)

    def flush(self) -> None:
        """Send what the socket takes now of ``outgoing``."""
        with contextlib.suppress(BlockingIOError):
            self.outgoing = self.outgoing[self.sock.send(self.outgoing) :]

    def read_available(self) -> int:
        """Read what the socket has, decrypt it; the plaintext bytes it held.

        Raises:
            ConnectionError: the server closed the connection.
        """
        try:
            count = self.sock.recv_into(self._ciphertext)
        except BlockingIOError:
            return 0
        if not count:
            raise ConnectionError("the server closed the connection")
        self._incoming.write(memoryview(self._ciphertext)[:count])
        total = 0
        with contextlib.suppress(ssl.SSLWantReadError):
            # with a buffer, read() returns a count (typeshed says bytes)
            while decrypted := cast(int, self._tls.read(len(self._plaintext), self._plaintext)):
                total += decrypted
        return total


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


Load = Callable[[int, Settings], dict[str, float]]
LOADS: dict[str, Load] = {
    "tls-keepalive": lambda port, settings: run_wrk(port, settings.duration_s, False, "https"),
    "tls-handshakes": lambda port, settings: run_handshakes(port, settings.duration_s),
    "tls-echo": lambda port, settings: run_echo_client(
        port, settings.duration_s, settings.warmup_s
    ),
}


def tls_session(bench: str, names: tuple[str, ...], handler: str) -> Session:
    """A Session: every server started once (same certificate), one load run per sample."""

    @contextlib.contextmanager
    def session(settings: Settings) -> Iterator[Measure]:
        write_certificate(settings.workdir)
        servers: dict[str, Server] = {}
        load = LOADS[bench]
        try:
            for name in names:
                servers[name] = start(name, settings.workdir, handler)

            def measure(name: str) -> Sample:
                server = servers[name]
                if settings.warmup_s > 0 and bench != "tls-echo":  # the echo warms up inside
                    warm = Settings(settings.warmup_s, 0.0, settings.workdir)
                    load(server.port, warm)
                cpu_before = server.cpu_s()
                result = load(server.port, settings)
                server_cpu_s = server.cpu_s() - cpu_before
                server.check_alive()
                seconds = result["seconds"] if "seconds" in result else (
                    result["requests"] / result["rate"])  # fmt: skip
                operations = result.get("requests", result["rate"] * seconds)
                return Sample(
                    result["rate"],
                    {
                        "server_cpu_pct": 100 * server_cpu_s / seconds,
                        "server_cpu_us_per_op": 1e6 * server_cpu_s / operations,
                        "client_cpu_pct": 100 * result["cpu_s"] / seconds,
                    },
                )

            yield measure
        finally:
            for server in servers.values():
                server.stop()

    return session


NOTES = (
    f"tls-keepalive: wrk -t1 -c{CONNECTIONS}, wrk's Requests/sec; tls-handshakes: "
    f"{HANDSHAKE_CLIENTS} x openssl s_time -new (a full handshake per connection, never "
    "resumed); tls-echo: one connection, MB = 10^6 bytes echoed",
    "srv us/op: the server's CPU per request, handshake or MB: the steadier figure on a "
    "shared machine; the clients share the same two cores",
)
TLS_KEEPALIVE = Benchmark(
    name="tls-keepalive",
    title=f"GET over {CONNECTIONS} keep-alive TLS connections",
    unit="req/s",
    higher_is_better=True,
    servers=("portd", "nginx"),
    session=tls_session("tls-keepalive", ("portd", "nginx"), "http-hello"),
    comparisons=(Comparison("portd", "nginx", 0.7),),
    notes=NOTES,
)
TLS_HANDSHAKES = Benchmark(
    name="tls-handshakes",
    title="full TLS handshakes (no resumption), a GET each",
    unit="conn/s",
    higher_is_better=True,
    servers=("portd", "nginx"),
    session=tls_session("tls-handshakes", ("portd", "nginx"), "http-hello"),
    comparisons=(Comparison("portd", "nginx", 0.8),),
    notes=NOTES,
)
TLS_ECHO = Benchmark(
    name="tls-echo",
    title="echo over one TLS connection",
    unit="MB/s",
    higher_is_better=True,
    servers=("portd", "socat"),
    session=tls_session("tls-echo", ("portd", "socat"), "echo"),
    comparisons=(Comparison("portd", "socat", 2.0),),
    notes=NOTES,
)
TLS_BENCHMARKS = (TLS_KEEPALIVE, TLS_HANDSHAKES, TLS_ECHO)


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the table, write the JSON."""
    args = _parser().parse_args(argv)
    if args.echo_client:
        port, seconds, _ = args.echo_client
        print(json.dumps(echo_client(int(port), float(seconds))))
        return 0
    from run import run_benchmarks

    chosen = [bench for bench in TLS_BENCHMARKS if not args.only or bench.name in args.only]
    results = [BenchmarkResult(bench) for bench in chosen]
    started = datetime.datetime.now(datetime.UTC)
    run_benchmarks(results, args.rounds, args.duration, WARMUP_S, "portd-bench-tls-")
    print_results("TLS", started, args.rounds, results, notes=NOTES)
    save_results(results_document(started, results), started, "tls", args.json)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="default: %(default)s")
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        metavar="S",
        help=f"seconds per sample, after {WARMUP_S:g} s of warm-up (default: %(default)s)",
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="some of: " + ", ".join(
        bench.name for bench in TLS_BENCHMARKS))  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON here")
    parser.add_argument(
        "--echo-client", nargs=3, metavar=("PORT", "S", "_"), help=argparse.SUPPRESS
    )  # the client's own process
    return parser


if __name__ == "__main__":
    sys.exit(main())
