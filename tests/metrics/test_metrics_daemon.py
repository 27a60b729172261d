"""/metrics of a real daemon, one process or several: read by prometheus_client's parsers
(text and OpenMetrics) and by `promtool check metrics`, added up over the workers, and
the same numbers `portd status` shows."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from tests.support import Daemon, require_tool, run_portd
from tests.workers.support import config, echo, listener

StartDaemon = Callable[..., Daemon]
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def scrape(port: int, accept: str = "") -> tuple[str, str]:
    """GET /metrics: the Content-Type and the body."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - http://
        return response.headers["Content-Type"], response.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels), as prometheus_client parses the text."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parse_text(text)
        for sample in family.samples
    }


def value(parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:  # fmt: skip
    return parsed[(name, tuple(sorted(labels.items())))]


def metrics_port(daemon: Daemon) -> int:
    port: int = daemon.events_until("metrics_ready", 1)[0]["port"]
    return port


def status(daemon: Daemon) -> dict[str, Any]:
    path = next(e for e in daemon.events if e.get("event") == "control_socket_ready")["path"]
    shown = run_portd("status", "--socket", path, "--json")
    assert shown.returncode == 0, shown.stderr
    reply: dict[str, Any] = json.loads(shown.stdout)
    return reply


def exchange(port: int, count: int, payload: bytes = b"12345") -> None:
    """``count`` connections open at once, each echoing ``payload``, then closed."""
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    try:
        for client in clients:
            assert echo(client, payload) == payload
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_add_up_every_worker_and_agree_with_status(
    start_daemon: StartDaemon, workers: int
) -> None:
    daemon = start_daemon(
        config(
            listener("e", reuse_port=True), daemon=f'workers = {workers}\nmetrics = "127.0.0.1:0"'
        )
    )
    port = daemon.ready()["e"]
    exchange(port, 40)
    daemon.events_until("connection_closed", 40)
    if workers == 2:
        served = {e["worker"] for e in daemon.events if e.get("event") == "connection_closed"}
        assert served == {0, 1}  # the sums below cover both workers
    content_type, text = scrape(metrics_port(daemon))
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    parsed = samples(text)
    assert value(parsed, "portd_connections_accepted_total", listener="e") == 40
    assert value(parsed, "portd_connections_active", listener="e") == 0
    assert value(parsed, "portd_received_bytes_total", listener="e") == 200
    assert value(parsed, "portd_sent_bytes_total", listener="e") == 200
    assert value(parsed, "portd_connections_closed_total", listener="e", how="closed") == 40
    assert value(parsed, "portd_connection_duration_seconds_count", listener="e") == 40
    buckets = [v for (name, _), v in parsed.items() if name.endswith("_bucket")]
    assert max(buckets) == 40
    assert value(parsed, "portd_processes") == (1 if workers == 1 else 3)
    assert value(parsed, "process_cpu_seconds_total") > 0
    if workers == 2:
        assert value(parsed, "portd_workers") == 2
    shown = status(daemon)["listeners"][0]
    assert (shown["total"], shown["bytes_in"], shown["active"]) == (40, 200, 0)


def test_openmetrics_when_asked_and_promtool_finds_nothing_to_fix(
    start_daemon: StartDaemon,
) -> None:
    daemon = start_daemon(
        config(
            listener("e", max_connections=1),
            listener("u", protocol="udp"),
            daemon='workers = 2\nmetrics = "127.0.0.1:0"',
        )
    )
    ports = daemon.ready()
    with socket.create_connection(("127.0.0.1", ports["e"]), timeout=10) as held:
        assert echo(held, b"x") == b"x"
        with socket.create_connection(("127.0.0.1", ports["e"]), timeout=10) as refused:
            assert refused.recv(1) == b""  # max_connections: closed at once
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(10)
            udp.sendto(b"d", ("127.0.0.1", ports["u"]))
            assert udp.recv(8) == b"d"
        port = metrics_port(daemon)
        content_type, text = scrape(port, OPENMETRICS)
        assert content_type == "application/openmetrics-text; version=1.0.0; charset=utf-8"
        assert text.endswith("# EOF\n")
        families = {f.name: f for f in parse_openmetrics(text)}  # type: ignore[no-untyped-call]
        refused_samples = families["portd_connections_refused"].samples
        assert [(s.labels, s.value) for s in refused_samples] == [
            ({"listener": "e", "reason": "max_connections"}, 1)
        ]
        received = families["portd_datagrams_received"].samples
        assert [(s.labels["listener"], s.value) for s in received] == [("u", 1)]
        _, plain = scrape(port)
    promtool = require_tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=plain, capture_output=True, text=True,
        timeout=30, check=False,
    )  # fmt: skip
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


def test_workers_replaced_by_a_reload_keep_their_counts_in_the_sums(
    start_daemon: StartDaemon,
) -> None:
    """Counters never go back: an exited worker's final report stays in the sums."""
    daemon = start_daemon(
        config(listener("e"), daemon='workers = 2\nmetrics = "127.0.0.1:0"\nshutdown_timeout_s = 5')
    )
    port = daemon.ready()["e"]
    exchange(port, 10)
    daemon.events_until("connection_closed", 10)
    metrics = metrics_port(daemon)
    before = value(samples(scrape(metrics)[1]), "portd_connections_accepted_total", listener="e")
    assert before == 10
    config_path = daemon.args[daemon.args.index("-c") + 1]
    with open(config_path, "a", encoding="utf-8") as file:  # noqa: PTH123
        file.write("backlog = 512\n")  # a change: a reload replaces every worker
    daemon.signal(signal.SIGHUP)
    daemon.wait_for("reload_complete")
    daemon.events_until("worker_stopped", 2)  # the old ones exited after their last report
    parsed = samples(scrape(metrics)[1])
    assert value(parsed, "portd_connections_accepted_total", listener="e") == 10
    assert value(parsed, "portd_worker_restarts_total") == 0


def test_the_endpoint_answers_only_get_metrics(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config(listener("e"), daemon='metrics = "127.0.0.1:0"'))
    daemon.ready()
    port = metrics_port(daemon)
    for path, status_code in (("/", 404), ("/metrics/x", 404)):
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
        assert error.value.code == status_code
        error.value.close()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)  # noqa: S310 - http://
    assert (error.value.code, error.value.headers["Allow"]) == (405, "GET, HEAD")
    error.value.close()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000)
        assert client.recv(64).startswith(b"HTTP/1.1 431 ")


def test_a_bind_beyond_loopback_is_served_and_logged(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config(listener("e"), daemon='metrics = "0.0.0.0:0"'))
    daemon.ready()
    (exposed,) = daemon.events_until("metrics_exposed", 1)
    assert exposed["level"] == "warning"
    assert exposed["addresses"][0].startswith("0.0.0.0:")
    _, text = scrape(metrics_port(daemon))
    assert "portd_build_info" in text


def test_a_bare_port_is_on_loopback() -> None:
    from portd.config.daemon import metrics_bind

    assert metrics_bind("9465") == "127.0.0.1:9465"  # noqa: fixed-port (parsed, not bound)
    assert metrics_bind("[::1]:9465") == "[::1]:9465"  # noqa: fixed-port


def test_a_worker_killed_outright_keeps_what_it_last_reported(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config(listener("e"), daemon='workers = 2\nmetrics = "127.0.0.1:0"'))
    port = daemon.ready()["e"]
    exchange(port, 10)
    daemon.events_until("connection_closed", 10)
    metrics = metrics_port(daemon)
    accepted = value(samples(scrape(metrics)[1]), "portd_connections_accepted_total", listener="e")
    assert accepted == 10
    for pid in {e["pid"] for e in daemon.events if e.get("event") == "worker_ready"}:
        os.kill(pid, signal.SIGKILL)
    daemon.events_until("worker_exited", 2)
    daemon.events_until("worker_ready", 4)
    parsed = samples(scrape(metrics)[1])
    assert value(parsed, "portd_connections_accepted_total", listener="e") == 10
    assert value(parsed, "portd_worker_restarts_total") == 2


@pytest.mark.parametrize("metrics", [False, True], ids=["off", "on"])
def test_the_metrics_code_loads_only_when_asked_and_prometheus_client_never(
    start_daemon: StartDaemon, metrics: bool
) -> None:
    setting = 'metrics = "127.0.0.1:0"' if metrics else ""
    daemon = start_daemon(
        config(listener("e"), daemon=setting), env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    )
    daemon.ready()
    if metrics:
        scrape(metrics_port(daemon))
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    imported = {line.rsplit("|", 1)[-1].strip() for line in daemon.lines if "import time:" in line}
    assert "portd.cli" in imported  # the import log is there
    assert ("portd.metrics.exposition" in imported) == metrics
    assert ("portd.metrics.server" in imported) == metrics
    assert not {name for name in imported if name.startswith("prometheus_client")}


def test_a_forwards_toxics_are_counted_per_connection_they_were_applied_to(
    start_daemon: StartDaemon,
) -> None:
    from portd.testing import serve

    with serve("echo") as upstream:
        host, port = upstream.address
        forward = listener("f", "forward", upstream=f"{host}:{port}")
        toxics = (
            '[[listener.toxic]]\ntype = "latency"\nname = "lag"\nlatency = 0\n'
            '[[listener.toxic]]\ntype = "latency"\nname = "second"\nlatency = 0\nnth = 2\n'
        )
        daemon = start_daemon(config(forward + toxics, daemon='metrics = "127.0.0.1:0"'))
        port = daemon.ready()["f"]
        for count in (1, 2, 3):  # one at a time: the second is the Nth = 2
            exchange(port, 1)
            daemon.events_until("connection_closed", count)
        parsed = samples(scrape(metrics_port(daemon))[1])
        shown = status(daemon)["listeners"][0]["handler_events"]
    event = "portd_handler_events_total"
    assert value(parsed, event, listener="f", event="toxic_applied:lag") == 3
    assert value(parsed, event, listener="f", event="toxic_applied:second") == 1
    assert shown == {"toxic_applied:lag": 3, "toxic_applied:second": 1}
