"""Soak: portd under many idle connections and a stream of mangled HTTP, not in the test run.

    python benchmarks/soak.py [--connections 10000] [--cycles 3] [--requests 20000] [--seed 1]

1. Idle connections: open N connections to an echo listener, measure the daemon's RSS
   and open descriptors, close them all, wait for the daemon's descriptors to return to
   their baseline; repeat for several cycles and check the last cycle sets no new high
   in the RSS left after close (it wobbles by a few MiB; a leak climbs every cycle).
2. Mangled HTTP: send requests from the http-hello corpus, mutated (bytes flipped,
   inserted, deleted, lines duplicated or cut) and split at random points, over real
   sockets; every answer must be a status line or a close, and the daemon must log no
   handler_failed or loop_error.

3. CRLF flood: two connections send empty lines (CRLF) to http-hello as fast as they
   can, reconnecting whenever they are closed, while a normal client probes with a GET
   on a new connection each time; its median and p99 latency are reported, next to
   nginx's (`return 200`, one worker) under the same flood when nginx is installed.

4. Reloads under load (benchmarks/soak_reload.py): 20 SIGHUPs changing listeners'
   options while keep-alive and new-connection clients send GETs; nothing may be refused
   or reset, and connections admitted before the reloads still count against a cap.

5. TLS (benchmarks/soak_tls.py; ``--tls-connections 0`` skips it): 10,000 idle TLS
   connections (RSS per connection, descriptors back to baseline after close), then
   2,000 failed handshakes that must not leave the daemon bigger.

Prints a table and exits 1 when a limit is exceeded. Loopback only; every server binds
port 0 but nginx, which is given a port the kernel just handed out.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from soak_reload import reload_under_load
from soak_tls import tls_round

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "handlers" / "http_corpus"
RSS_LIMIT_MIB = 64
# RSS after close wobbles by several MiB from cycle to cycle (the allocator keeps and
# reuses freed memory) and goes down as well as up; a leak instead sets a new high every
# cycle. So the last cycle may not exceed the earlier cycles' peak by more than 2 MiB.
NEW_HIGH_LIMIT_MIB = 2.0
STATUS_PREFIX = b"HTTP/1.1 "

CONFIG = """
[daemon]
log_level = "info"
[[listener]]
name = "echo"
bind = "127.0.0.1:0"
handler = "echo"
max_connections = 100000
backlog = 4096
[[listener]]
name = "http"
bind = "127.0.0.1:0"
handler = "http-hello"
header_timeout_s = 2
"""


class Daemon:
    """portd serve with a JSON log on stderr, read in a thread."""

    def __init__(self, directory: Path) -> None:
        config = directory / "soak.toml"
        config.write_text(CONFIG)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.proc = subprocess.Popen(
            ["prlimit", f"--nofile={nofile}", sys.executable, "-m", "portd", "serve",
             "-c", str(config), "--log-format", "json"],
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.ports: dict[str, int] = {}
        self.events: dict[str, int] = {}
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(30):
            raise SystemExit("portd did not become ready")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "not_json"}
            name = event.get("event", "?")
            self.events[name] = self.events.get(name, 0) + 1
            if name == "listener_started":
                self.ports[event["listener"]] = event["port"]
            elif name == "daemon_ready":
                self.ready.set()

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def fds(self) -> int:
        return sum(1 for _ in Path(f"/proc/{self.proc.pid}/fd").iterdir())

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=60)


def idle_cycles(daemon: Daemon, count: int, cycles: int) -> list[dict[str, float]]:
    """Open and close ``count`` idle connections ``cycles`` times; figures per cycle."""
    socket.create_connection(("127.0.0.1", daemon.ports["echo"])).close()  # lazy set-up
    time.sleep(0.5)  # let that first connection's close be processed before the baseline
    baseline_fds = daemon.fds()
    baseline_rss = daemon.rss_mib()
    rows = []
    for cycle in range(1, cycles + 1):
        conns = [
            socket.create_connection(("127.0.0.1", daemon.ports["echo"])) for _ in range(count)
        ]
        deadline = time.monotonic() + 60
        while daemon.fds() < baseline_fds + count and time.monotonic() < deadline:
            time.sleep(0.05)  # waiting for the daemon to accept them all: polled, not assumed
        held_fds, held_rss = daemon.fds(), daemon.rss_mib()
        for conn in conns:
            conn.close()
        deadline = time.monotonic() + 60
        while daemon.fds() > baseline_fds and time.monotonic() < deadline:
            time.sleep(0.05)
        rows.append({
            "cycle": cycle,
            "held_fds": held_fds - baseline_fds,
            "rss_growth_mib": round(held_rss - baseline_rss, 1),
            "kib_per_connection": round((held_rss - baseline_rss) * 1024 / count, 2),
            "fds_after_close": daemon.fds() - baseline_fds,
            "rss_after_close_mib": round(daemon.rss_mib() - baseline_rss, 1),
        })  # fmt: skip
    return rows


def mutate(request: bytes, rng: random.Random) -> bytes:
    """One to three random edits of a request."""
    data = bytearray(request)
    for _ in range(rng.randint(1, 3)):
        edit = rng.randrange(5)
        at = rng.randrange(len(data) + 1) if data else 0
        if edit == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif edit == 1:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif edit == 2 and data:
            del data[at : at + rng.randint(1, 8)]
        elif edit == 3:
            lines = bytes(data).split(b"\r\n")
            pick = rng.randrange(len(lines))
            lines.insert(pick, lines[pick])
            data = bytearray(b"\r\n".join(lines))
        else:
            data = data[:at]
    return bytes(data)


def send_mangled(port: int, requests: list[bytes], seed: int, results: dict[str, int]) -> None:
    rng = random.Random(seed)
    for request in requests:
        data = mutate(request, rng)
        cuts = (
            sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(0, 4))))
            if len(data) > 1
            else []
        )
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
                    sock.sendall(data[start:end])
                sock.shutdown(socket.SHUT_WR)
                reply = sock.recv(64)
            except (ConnectionResetError, BrokenPipeError, OSError):  # answered and closed early
                reply = b""
            except TimeoutError:
                reply = b"timeout"
        if reply.startswith(STATUS_PREFIX):
            key = "status " + reply[9:12].decode(errors="replace")
        else:
            key = "closed" if not reply else "other"
        results[key] = results.get(key, 0) + 1


def mangled_http(daemon: Daemon, total: int, seed: int, threads: int = 4) -> dict[str, int]:
    corpus = [path.read_bytes() for path in sorted(CORPUS.glob("*.http"))]
    rng = random.Random(seed)
    requests = [rng.choice(corpus) for _ in range(total)]
    results: list[dict[str, int]] = [{} for _ in range(threads)]
    workers = [
        threading.Thread(target=send_mangled,
                         args=(daemon.ports["http"], requests[i::threads], seed + i, results[i]))
        for i in range(threads)
    ]  # fmt: skip
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    merged: dict[str, int] = {}
    for result in results:
        for key, value in result.items():
            merged[key] = merged.get(key, 0) + value
    return merged


FLOOD_CONNECTIONS = 2
CRLF_MEDIAN_LIMIT_MS = 100.0
PROBE = b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"


def _flood(port: int, stop: threading.Event) -> None:
    chunk = b"\r\n" * 32768
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                while not stop.is_set():
                    sock.sendall(chunk)
        except OSError:
            continue  # closed by the server: come back, as an attacker would


def _probe_ms(port: int) -> float:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(PROBE)
        while sock.recv(65536):
            pass
    return (time.monotonic() - started) * 1000


def crlf_flood(port: int, seconds: float) -> dict[str, float]:
    """Probe latency (ms) of a normal client while FLOOD_CONNECTIONS send CRLF forever."""
    stop = threading.Event()
    threads = [threading.Thread(target=_flood, args=(port, stop), daemon=True)
               for _ in range(FLOOD_CONNECTIONS)]  # fmt: skip
    for thread in threads:
        thread.start()
    latencies = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            latencies.append(_probe_ms(port))
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    latencies.sort()
    return {
        "probes": len(latencies),
        "median_ms": round(latencies[len(latencies) // 2], 2),
        "p99_ms": round(latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)], 2),
    }


def nginx_crlf_flood(directory: Path, seconds: float) -> dict[str, float] | None:
    """The same round against nginx (None when nginx is not installed)."""
    import shutil

    if shutil.which("nginx") is None:
        return None
    from http_hello import nginx_command  # a sibling, as the benchmarks import each other

    with socket.socket() as hold:  # nginx needs a number in its config
        hold.bind(("127.0.0.1", 0))
        port = hold.getsockname()[1]
    proc = subprocess.Popen(nginx_command(directory, port), stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("nginx did not start") from None
                time.sleep(0.05)  # waiting for nginx to listen: polled with a connect
        return crlf_flood(port, seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--flood-seconds", type=float, default=5.0)
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--tls-connections", type=int, default=10_000, help="0: no TLS round")
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.connections + 200:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is below {args.connections + 200}")
    with tempfile.TemporaryDirectory() as directory:
        daemon = Daemon(Path(directory))
        try:
            cycles = idle_cycles(daemon, args.connections, args.cycles)
            started = time.monotonic()
            http = mangled_http(daemon, args.requests, args.seed)
            elapsed = time.monotonic() - started
            flood = crlf_flood(daemon.ports["http"], args.flood_seconds)
        finally:
            code = daemon.stop()
        nginx = nginx_crlf_flood(Path(directory), args.flood_seconds)
        reloads = reload_under_load(Path(directory), args.reloads)
        tls = tls_round(Path(directory), args.tls_connections) if args.tls_connections else None
    failures = daemon.events.get("handler_failed", 0) + daemon.events.get("loop_error", 0)
    print(f"idle connections: {args.connections} x {args.cycles} cycles")
    for row in cycles:
        print("  " + ", ".join(f"{key} {value}" for key, value in row.items()))
    outcomes = dict(sorted(http.items()))
    print(f"mangled HTTP: {sum(http.values())} requests in {elapsed:.1f} s: {outcomes}")
    print(f"CRLF flood ({FLOOD_CONNECTIONS} connections, {args.flood_seconds:g} s), a normal "
          f"client's GET: portd {flood}; nginx {nginx or 'not installed'}")  # fmt: skip
    print(f"reloads under load: {reloads}")
    print(f"TLS: {tls if tls else 'skipped (--tls-connections 0)'}")
    print(f"daemon: handler_failed + loop_error = {failures}, exit code {code}")
    after = [row["rss_after_close_mib"] for row in cycles]
    new_high = after[-1] - max(after[:-1], default=after[-1])
    print(f"RSS after close per cycle: {after} MiB; last cycle over the earlier peak: "
          f"{new_high:+.1f} MiB (limit {NEW_HIGH_LIMIT_MIB})")  # fmt: skip
    ok = (
        all(row["rss_growth_mib"] <= RSS_LIMIT_MIB for row in cycles)
        and all(row["fds_after_close"] == 0 for row in cycles)
        and new_high <= NEW_HIGH_LIMIT_MIB
        and failures == 0
        and http.get("other", 0) == 0
        and flood["median_ms"] <= CRLF_MEDIAN_LIMIT_MS
        and reloads["refused"] == reloads["reset"] == reloads["extra_admitted_past_cap"] == 0
        and code == 0
        and (tls is None or tls["ok"])
    )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
