"""A TLS listener served by workers: handshakes in every worker, and the handshake
failures of all of them added up in /metrics (by reason, read by prometheus_client's
parser) and in ``portd status``."""

from __future__ import annotations

import os
import signal
import textwrap
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from portd.testing.tls import session_authority
from tests.metrics.test_metrics_daemon import metrics_port, samples, scrape, status, value
from tests.support import Daemon
from tests.tls.files import NAMES, Pair, tls_table, write_pair
from tests.tls.test_tls_daemon import plaintext_http, tls_connect
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
    path.write_text('[daemon]\nworkers = 2\nuser = "65534"\n' + tls_table(pair))
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
            assert holders([restarted["pid"]], port)[restarted["pid"]] > 0  # 2^-16 by chance
        finally:
            for client in clients:
                client.close()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        daemon.stop()


def pwd_uid(pid: int) -> int:
    return psutil.Process(pid).uids().real
