"""A TLS listener served by workers: handshakes in every worker, the handshake failures
of all of them added up in /metrics (by reason, read by prometheus_client's parser) and
in ``portd status``, a key only root reads after the privilege drop, and a renewed
certificate on SIGHUP with no client refused."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from portd.testing.tls import session_authority
from portd.tls.certs import pem_fingerprint
from portd.tls.info import sha256_fingerprint
from tests.metrics.test_metrics_daemon import metrics_port, samples, scrape, status, value
from tests.support import Daemon
from tests.tls.files import NAMES, Pair, tls_table, write_pair
from tests.tls.test_tls_daemon import plaintext_http, renew, served_fingerprint, tls_connect
from tests.workers.support import echo, holders, worker_pids

StartDaemon = Callable[..., Daemon]


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return write_pair(tmp_path, session_authority().authority.issue(NAMES))


def test_tls_connections_spread_over_workers_and_their_failures_add_up(
    start_daemon: StartDaemon, pair: Pair
) -> None:
    daemon_table = textwrap.dedent("""\
        [daemon]
        workers = 2
        metrics = "127.0.0.1:0"
        """)
    daemon = start_daemon(daemon_table + tls_table(pair, "reuse_port = true\n"))
    port = daemon.ready()["web"]
    pids = worker_pids(daemon)
    clients = [tls_connect(port) for _ in range(24)]
    try:
        for client in clients:
            assert echo(client, b"tls") == b"tls"
            assert client.version() in ("TLSv1.2", "TLSv1.3")
        held = holders(pids.values(), port)
        assert sum(held.values()) == 24
        assert all(held[pid] > 0 for pid in pids.values()), held  # 2^-23 to fail by chance
    finally:
        for client in clients:
            client.close()
    assert [plaintext_http(port) for _ in range(6)] == [b""] * 6
    daemon.events_until("connection_closed", 24)
    parsed = samples(scrape(metrics_port(daemon))[1])
    failed = value(
        parsed, "portd_tls_handshake_failures_total", listener="web", reason="plaintext_http"
    )
    assert failed == 6
    assert value(parsed, "portd_connections_accepted_total", listener="web") == 24
    (listener,) = status(daemon)["listeners"]
    assert listener["tls_handshake_failed"] == {"plaintext_http": 6}
    assert listener["total"] == 24


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_workers_serve_a_key_only_root_can_read_after_the_drop(public_dir: Path) -> None:
    """As one process does: the files are loaded before the drop, so a key readable by
    root alone serves, in the first workers and in one started again after a SIGKILL."""
    pair = write_pair(public_dir, session_authority().authority.issue(NAMES))
    assert pair.key.stat().st_mode & 0o777 == 0o600  # root's, as written
    path = public_dir / "portd.toml"
    # reuse_port: the restarted worker has a socket of its own, so it gets connections
    path.write_text(
        '[daemon]\nworkers = 2\nuser = "65534"\n' + tls_table(pair, "reuse_port = true\n")
    )
    daemon = Daemon(["-c", str(path)])
    try:
        port = daemon.ready()["web"]
        with tls_connect(port) as client:
            assert echo(client, b"x") == b"x"
        os.kill(worker_pids(daemon)[0], signal.SIGKILL)
        restarted = daemon.events_until("worker_ready", 3)[-1]
        assert restarted["worker"] == 0
        assert pwd_uid(restarted["pid"]) == 65534
        clients = [tls_connect(port) for _ in range(16)]
        try:
            for client in clients:
                assert echo(client, b"y") == b"y"
            assert holders([restarted["pid"]], port)[restarted["pid"]] > 0  # 2^-15 by chance
        finally:
            for client in clients:
                client.close()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        daemon.stop()


def pwd_uid(pid: int) -> int:
    return psutil.Process(pid).uids().real


@pytest.mark.parametrize("reuse_port", [False, True], ids=["shared", "reuse_port"])
def test_a_renewed_certificate_under_workers_serves_new_connections_and_drops_none(
    start_daemon: StartDaemon, pair: Pair, reuse_port: bool
) -> None:
    """SIGHUP starts workers that load the renewed files; the old ones drain with their
    connections (and their certificate); no client is refused meanwhile."""
    extra = "max_connections = 4096\n" + ("reuse_port = true\n" if reuse_port else "")
    daemon = start_daemon("[daemon]\nworkers = 2\n" + tls_table(pair, extra))
    port = daemon.ready()["web"]
    old = pem_fingerprint(pair.cert.read_bytes())
    live = [tls_connect(port) for _ in range(40)]
    stop, failures, handshakes = threading.Event(), [], [0]

    def keep_connecting() -> None:
        while not stop.is_set():
            try:
                with tls_connect(port) as client:
                    if echo(client, b"ping") != b"ping":
                        failures.append("no echo")
                handshakes[0] += 1
            except OSError as exc:
                failures.append(repr(exc))

    arriving = threading.Thread(target=keep_connecting)
    arriving.start()
    try:
        new = renew(pair, session_authority().authority)
        daemon.signal(signal.SIGHUP)
        daemon.wait_for("reload_complete")
        assert [served_fingerprint(port) for _ in range(8)] == [new] * 8
    finally:
        stop.set()
        arriving.join()
    assert failures == []
    assert handshakes[0] > 0
    for client in live:  # made before the reload: served on by the old workers
        assert echo(client, b"still here") == b"still here"
        assert sha256_fingerprint(client.getpeercert(binary_form=True) or b"") == old
        client.close()
