"""A TLS listener served by workers: handshakes in every worker, and the handshake
failures of all of them added up in /metrics (by reason, read by prometheus_client's
parser) and in ``portd status``."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

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
