"""A TLS listener in the daemon: handshake failures logged one line per reason and
second (counts adding up), counted in ``portd status``; a peer that never reads cannot
grow the daemon; SIGHUP serves a renewed certificate to new connections while live
ones go on, and a renewed file that fails to load keeps the old one."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from portd.testing.tls import session_authority
from portd.tls.certs import Authority
from portd.tls.info import sha256_fingerprint
from tests.support import Daemon, run_portd
from tests.tls.files import NAMES, Pair, tls_table, write_pair

StartDaemon = Callable[..., Daemon]
LOOPS = pytest.mark.parametrize("loop", ["uvloop", "asyncio"])


def daemon_config(pair: Pair, loop: str = "uvloop", extra: str = "") -> str:
    return f'[daemon]\nloop = "{loop}"\n' + tls_table(pair, extra)


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return write_pair(tmp_path, session_authority().authority.issue(NAMES))


def context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=session_authority().ca_path)


def tls_connect(port: int, ctx: ssl.SSLContext | None = None) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return (ctx or context()).wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def plaintext_http(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        return client.recv(100)


@LOOPS
def test_handshake_failures_are_logged_by_reason_and_counted(
    start_daemon: StartDaemon, pair: Pair, loop: str
) -> None:
    daemon = start_daemon(daemon_config(pair, loop))
    port = daemon.ready()["web"]
    assert [plaintext_http(port) for _ in range(5)] == [b""] * 5
    first = daemon.wait_for("tls_handshake_failed")
    assert (first["reason"], first["level"]) == ("plaintext_http", "warning")
    status = run_portd("status", "-c", daemon.args[1], "--json")
    assert status.returncode == 0, status.stderr
    (listener,) = json.loads(status.stdout)["listeners"]
    assert listener["tls_handshake_failed"] == {"plaintext_http": 5}
    assert listener["total"] == 0  # no handler ever saw one
    table = run_portd("status", "-c", daemon.args[1]).stdout
    assert "tls_handshake_failed 5" in table
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    lines = [e for e in daemon.events if e.get("event") == "tls_handshake_failed"]
    assert sum(e["count"] for e in lines) == 5
    assert len(lines) <= 2  # one now, the rest when the second is over (or at stop)
    assert not any("Traceback" in line or "exception" in line for line in daemon.lines)


@LOOPS
def test_a_peer_that_never_reads_cannot_grow_the_daemon_over_tls(
    start_daemon: StartDaemon, pair: Pair, loop: str
) -> None:
    daemon = start_daemon(daemon_config(pair, loop))
    port = daemon.ready()["web"]
    process = psutil.Process(daemon.proc.pid)
    with tls_connect(port) as client:
        client.settimeout(2.0)
        rss_before = process.memory_info().rss
        chunk, sent = b"x" * 65536, 0
        while sent < 256 << 20:
            try:
                sent += client.send(chunk)
            except TimeoutError:  # no room for 2 s: the daemon stopped reading
                break
        growth = process.memory_info().rss - rss_before
    assert sent < 64 << 20, f"{sent} bytes accepted from a peer that never reads"
    assert growth < 16 << 20, f"daemon grew by {growth} bytes"


def renew(pair: Pair, authority: Authority) -> str:
    """Replace the files as certbot does (new files renamed over the old); return the
    new certificate's fingerprint."""
    issued = authority.issue(NAMES)
    for path, data in ((pair.cert, issued.cert_pem), (pair.key, issued.key_pem)):
        fresh = path.with_suffix(".new")
        fresh.write_bytes(data)
        fresh.replace(path)
    from portd.tls.certs import pem_fingerprint

    return pem_fingerprint(issued.cert_pem)


def served_fingerprint(port: int) -> str:
    with tls_connect(port) as client:
        der = client.getpeercert(binary_form=True)
    assert der is not None
    return sha256_fingerprint(der)


@LOOPS
def test_a_renewed_certificate_serves_new_connections_and_drops_none(
    start_daemon: StartDaemon, pair: Pair, loop: str
) -> None:
    daemon = start_daemon(daemon_config(pair, loop, "max_connections = 4096\n"))
    port = daemon.ready()["web"]
    from portd.tls.certs import pem_fingerprint

    old = pem_fingerprint(pair.cert.read_bytes())
    live = [tls_connect(port) for _ in range(200)]
    stop, failures, handshakes = threading.Event(), [], [0]

    def keep_connecting() -> None:
        while not stop.is_set():
            try:
                with tls_connect(port) as client:
                    client.sendall(b"ping")
                    if client.recv(4) != b"ping":
                        failures.append("no echo")
                handshakes[0] += 1
            except OSError as exc:
                failures.append(repr(exc))

    arriving = threading.Thread(target=keep_connecting)
    arriving.start()
    try:
        new = renew(pair, session_authority().authority)
        daemon.signal(signal.SIGHUP)
        done = daemon.wait_for("reload_complete")
        assert (done["changed"], done["sockets_handed_over"]) == (1, 1)
        assert served_fingerprint(port) == new != old
    finally:
        stop.set()
        arriving.join()
    assert failures == []
    assert handshakes[0] > 0
    for client in live:  # every connection made before the reload still echoes
        client.sendall(b"still here")
        assert client.recv(10) == b"still here"
        assert sha256_fingerprint(client.getpeercert(binary_form=True) or b"") == old
        client.close()


def test_a_renewed_file_that_fails_to_load_keeps_the_old_certificate(
    start_daemon: StartDaemon, pair: Pair
) -> None:
    daemon = start_daemon(daemon_config(pair))
    port = daemon.ready()["web"]
    before = served_fingerprint(port)
    other = session_authority().authority.issue(["other"])
    pair.key.write_bytes(other.key_pem)  # a key that belongs to another certificate
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_for("reload_failed")
    assert "does not match the certificate" in failed["error"]
    assert served_fingerprint(port) == before
