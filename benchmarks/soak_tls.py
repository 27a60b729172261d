"""Soak, TLS round (soak.py runs it; ``--tls-connections 0`` skips it): many idle TLS
connections and a burst of failed handshakes against a TLS echo listener.

1. Open N TLS connections (full handshakes from a few client threads), each echoing
   64 bytes once, then idle: the daemon's RSS growth per connection and its descriptors;
   close them all and wait for the descriptors to return to their baseline, and for
   the memory the connections freed to go back to the system (RSS within
   RETURNED_LIMIT_MIB of the baseline, RETURN_WAIT_S at most).
2. Failed handshakes: FAILED_HANDSHAKES plaintext requests in a row (each one a
   ``tls_handshake_failed``); the RSS left after them must not climb (CPython's
   asyncio TLS transport leaked the protocol of every failed handshake before 3.11.8 /
   3.12.2, python/cpython#109534; this round shows whether this Python does).

Loopback only; the daemon binds port 0.
"""

from __future__ import annotations

import json
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FAILED_HANDSHAKES = 2000
CLIENT_THREADS = 8
MESSAGE = b"m" * 64
TLS_KIB_LIMIT = 64  # per idle TLS connection: OpenSSL's buffers are most of it
FAILURE_GROWTH_LIMIT_MIB = 8.0
RETURNED_LIMIT_MIB = 48.0  # RSS above the baseline once the freed memory went back
RETURN_WAIT_S = 30.0  # the daemon checks every 10 s (portd/memory.py)


def _config(directory: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from portd.tls.certs import Authority

    issued = Authority("soak CA").issue(["127.0.0.1"])
    (directory / "soak-cert.pem").write_bytes(issued.cert_pem)
    (directory / "soak-key.pem").write_bytes(issued.key_pem)
    config = directory / "soak-tls.toml"
    config.write_text(
        f'[daemon]\nlog_level = "info"\n[[listener]]\nname = "tls"\nbind = "127.0.0.1:0"\n'
        f'handler = "echo"\nmax_connections = 100000\nbacklog = 4096\nlog_connections = false\n'
        f'tls_cert = "{directory}/soak-cert.pem"\ntls_key = "{directory}/soak-key.pem"\n'
    )
    return config


class TLSDaemon:
    """``portd serve`` with one TLS echo listener; its JSON log read in a thread."""

    def __init__(self, directory: Path) -> None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.proc = subprocess.Popen(
            ["prlimit", f"--nofile={nofile}", sys.executable, "-m", "portd", "serve",
             "-c", str(_config(directory)), "--log-format", "json"],
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.port = 0
        self.events: dict[str, int] = {}
        self.failed_count = 0  # summed from tls_handshake_failed lines
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.ready.wait(30):
            raise SystemExit("portd (TLS) did not become ready")

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
                self.port = event["port"]
            elif name == "daemon_ready":
                self.ready.set()
            elif name == "tls_handshake_failed":
                self.failed_count += event.get("count", 0)

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


def _connect(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock = context.wrap_socket(raw)
    sock.sendall(MESSAGE)
    received = b""
    while len(received) < len(MESSAGE):
        received += sock.recv(len(MESSAGE))
    return sock


def _wait_fds(daemon: TLSDaemon, done: Any, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the daemon's /proc entry: not a readiness signal


def _plaintext_request(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        while sock.recv(4096):
            pass


def tls_round(directory: Path, count: int) -> dict[str, Any]:
    """Both parts; the figures, and ``ok``."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    daemon = TLSDaemon(directory)
    try:
        _connect(daemon.port, context).close()  # lazy set-up, before the baseline
        _wait_fds(daemon, lambda: False, 0.5)
        base_fds, base_rss = daemon.fds(), daemon.rss_mib()
        started = time.monotonic()
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            conns = list(pool.map(lambda _: _connect(daemon.port, context), range(count)))
        handshake_s = time.monotonic() - started
        _wait_fds(daemon, lambda: daemon.fds() >= base_fds + count)
        held_fds, held_rss = daemon.fds() - base_fds, daemon.rss_mib()
        for conn in conns:
            conn.close()
        _wait_fds(daemon, lambda: daemon.fds() <= base_fds)
        after_close_fds, after_close_rss = daemon.fds() - base_fds, daemon.rss_mib()
        closed = time.monotonic()
        _wait_fds(daemon, lambda: daemon.rss_mib() <= base_rss + RETURNED_LIMIT_MIB, RETURN_WAIT_S)
        returned_s, returned_rss = time.monotonic() - closed, daemon.rss_mib()
        for _ in range(FAILED_HANDSHAKES):
            _plaintext_request(daemon.port)
        _wait_fds(daemon, lambda: daemon.fds() <= base_fds)
        after_failures_rss = daemon.rss_mib()
    finally:
        code = daemon.stop()
    kib = (held_rss - base_rss) * 1024 / count
    failure_growth = after_failures_rss - returned_rss
    result = {
        "connections": count,
        "handshakes_per_s": round(count / handshake_s, 1),
        "held_fds": held_fds,
        "kib_per_connection": round(kib, 1),
        "fds_after_close": after_close_fds,
        "rss_after_close_mib": round(after_close_rss - base_rss, 1),
        "rss_returned_mib": round(returned_rss - base_rss, 1),
        "returned_after_s": round(returned_s, 1),
        "failed_handshakes": FAILED_HANDSHAKES,
        "failed_logged": daemon.failed_count,
        "rss_growth_after_failures_mib": round(failure_growth, 1),
        "exit_code": code,
    }
    result["ok"] = (
        held_fds == count
        and after_close_fds == 0
        and kib <= TLS_KIB_LIMIT
        and returned_rss - base_rss <= RETURNED_LIMIT_MIB
        and failure_growth <= FAILURE_GROWTH_LIMIT_MIB
        and daemon.failed_count == FAILED_HANDSHAKES
        and daemon.events.get("handler_failed", 0) + daemon.events.get("loop_error", 0) == 0
        and code == 0
    )
    return result
