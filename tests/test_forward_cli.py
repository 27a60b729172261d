"""``portd forward`` and a config's forward listeners as a user runs them: toxics from
the command line and from ``[[listener.toxic]]``, a reload that changes toxics on live
connections without touching a socket, ``[daemon] toxiproxy_api``, and bad input as
one line with its exit code."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from portd.testing import serve
from tests.support import PORTD, Daemon, run_portd, write_config


class ForwardProcess(Daemon):
    """``portd forward ARGS`` with the JSON log reader of Daemon."""

    def __init__(self, *args: str) -> None:
        import queue
        import threading

        self.args = list(args)
        self.proc = subprocess.Popen(
            [*PORTD, "forward", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


def ping_ms(port: int, payload: bytes = b"ping") -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        started = time.perf_counter()
        client.sendall(payload)
        assert client.recv(len(payload)) == payload
        return (time.perf_counter() - started) * 1000


def test_portd_forward_with_a_toxic_from_the_command_line() -> None:
    with serve("echo") as echo:
        proxy = ForwardProcess(
            "127.0.0.1:0", f"127.0.0.1:{echo.port}", "--toxic", "latency:latency=120,jitter=0"
        )
        try:
            port = proxy.ready()["forward"]
            assert 118 <= ping_ms(port) <= 300
            closed = proxy.wait_for("connection_closed")
            proxy.signal(signal.SIGTERM)
            assert proxy.wait() == 0
        finally:
            proxy.stop()
    assert closed["upstream"] == f"127.0.0.1:{echo.port}"
    assert (closed["bytes_in"], closed["bytes_out"], closed["error"]) == (4, 4, None)


def test_an_unreachable_upstream_logs_upstream_failed() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
        proxy = ForwardProcess("127.0.0.1:0", f"127.0.0.1:{holder.getsockname()[1]}")
        try:
            port = proxy.ready()["forward"]
            with (
                pytest.raises(ConnectionResetError),  # at connect or at the read
                socket.create_connection(("127.0.0.1", port), timeout=10) as client,
            ):
                client.recv(1)
            failed = proxy.wait_for("upstream_failed")
            closed = proxy.wait_for("connection_closed")
        finally:
            proxy.stop()
    assert failed["error"] == "Connection refused"
    assert closed["error"] == "upstream_failed: Connection refused"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["5000", "127.0.0.1:9", "--toxic", "latancy:latency=1"], "--toxic: type = 'latancy'"),
        (["5000", "127.0.0.1:9", "--toxic", "latency:latency"], "expected KEY=VALUE"),
        (["5000", "127.0.0.1:9", "--toxic", "latency:latency=-5"], "latency = -5: expected"),
        (["5000", "127.0.0.1:9", "-u", "--toxic", "slicer"], "a udp forward takes latency"),
    ],
)
def test_a_bad_toxic_is_one_line_and_exit_64_or_78(args: list[str], message: str) -> None:
    done = run_portd("forward", *args)
    assert done.returncode in (64, 78)
    (line,) = done.stderr.splitlines()
    assert message in line
    assert "Traceback" not in done.stderr


def test_an_upstream_without_a_host_is_a_config_error() -> None:
    done = run_portd("forward", "127.0.0.1:0", "5432")
    assert done.returncode == 78
    (line,) = done.stderr.splitlines()
    assert "expected HOST:PORT to connect to" in line


def test_curl_crosses_a_forward_that_terminates_and_originates_tls(tmp_path: Any) -> None:
    """curl -> TLS (portd cert's leaf) -> portd forward -> TLS (the test CA) -> http-hello."""
    from tests.support import require_tool

    assert run_portd("cert", "--out", str(tmp_path), "localhost", "127.0.0.1").returncode == 0
    with serve("http-hello", tls=True) as echo:
        proxy = ForwardProcess(
            "127.0.0.1:0", f"127.0.0.1:{echo.port}", "--tls-cert", f"{tmp_path}/cert.pem",
            "--tls-key", f"{tmp_path}/key.pem", "--upstream-tls", "--upstream-ca", echo.ca_path,
            "--upstream-servername", "localhost",
        )  # fmt: skip
        try:
            port = proxy.ready()["forward"]
            done = subprocess.run(
                [require_tool("curl"), "-sS", "--cacert", f"{tmp_path}/ca.pem",
                 f"https://127.0.0.1:{port}/"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            closed = proxy.wait_for("connection_closed")
            proxy.signal(signal.SIGTERM)
            assert proxy.wait() == 0
        finally:
            proxy.stop()
    assert (done.returncode, done.stdout, done.stderr) == (0, "Hello from portd\n", "")
    assert closed["upstream_ended"] == "closed"


@pytest.mark.parametrize(("args", "message"), [
    (["--upstream-ca", "ca.pem"], "upstream_ca: needs upstream_tls = true"),
    (["--upstream-tls", "--upstream-ca", "/no/such/ca.pem"],
     'upstream_ca = "/no/such/ca.pem": cannot read: No such file or directory (errno 2)'),
    (["--tls-cert", "/no/such/cert.pem"], "tls_cert: TLS needs both tls_cert and tls_key"),
    (["-u", "--upstream-tls"], "upstream_tls applies to stream forwards only"),
])  # fmt: skip
def test_bad_tls_options_are_one_line_and_exit_78(args: list[str], message: str) -> None:
    done = run_portd("forward", "127.0.0.1:0", "127.0.0.1:9", *args)
    assert done.returncode == 78
    (line,) = done.stderr.splitlines()
    assert message in line


def test_forward_help_names_the_toxics_and_exit_codes() -> None:
    done = run_portd("forward", "--help")
    assert done.returncode == 0
    for word in ("latency:latency=MS", "packet_loss", "exit status", "64", "69"):
        assert word in done.stdout


CONFIG = """
[daemon]
log_format = "json"

[[listener]]
name = "db"
bind = "127.0.0.1:0"
handler = "forward"
upstream = "127.0.0.1:{port}"

{toxics}
"""


def test_a_reload_changes_toxics_on_live_connections_without_touching_sockets(
    start_daemon: Callable[..., Daemon], tmp_path: Any
) -> None:
    with serve("echo") as echo:
        daemon = start_daemon(CONFIG.format(port=echo.port, toxics=""))
        port = daemon.ready()["db"]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as live:
            live.sendall(b"a")
            assert live.recv(1) == b"a"
            path = next(tmp_path.glob("portd-*.toml"))
            path.write_text(CONFIG.format(port=echo.port, toxics="""
[[listener.toxic]]
type = "latency"
latency = 150
"""), encoding="utf-8")  # fmt: skip
            daemon.signal(signal.SIGHUP)
            done = daemon.wait_for("reload_complete")
            started = time.perf_counter()
            live.sendall(b"b")
            assert live.recv(1) == b"b"  # the same connection, now late
            assert time.perf_counter() - started >= 0.148
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert (done["updated"], done["sockets_bound"], done["changed"]) == (1, 0, 0)


def test_toxic_tables_with_bad_keys_are_config_errors(tmp_path: Any) -> None:
    path = write_config(tmp_path, CONFIG.format(port=9, toxics="""
[[listener.toxic]]
type = "latency"
latnecy = 5
"""))  # fmt: skip
    done = run_portd("check", str(path))
    assert done.returncode == 78
    (line,) = done.stderr.splitlines()
    assert "toxic #1: 'latnecy' is not a latency key" in line


def test_a_config_with_the_toxiproxy_api_and_no_listeners(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon('[daemon]\ntoxiproxy_api = "127.0.0.1:0"\n')
    ready = daemon.wait_for("toxiproxy_api_ready")
    host, _, port = ready["address"].rpartition(":")
    import http.client

    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", "/version")
    assert connection.getresponse().status == 200
    connection.close()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_a_non_loopback_toxiproxy_api_in_a_config_is_refused(tmp_path: Any) -> None:
    path = write_config(tmp_path, '[daemon]\ntoxiproxy_api = "0.0.0.0:8474"\n')
    done = run_portd("check", str(path))
    assert done.returncode == 78
    assert "toxiproxy_api_remote = true" in done.stderr


def test_readmes_first_forward_example_runs() -> None:
    """README's ``portd forward 6000 127.0.0.1:5432 --toxic ...``, on port 0 in front of a
    portd echo server instead of a database."""
    import re
    import shlex

    from tests.docs import TEXT as README

    line = re.search(r"^\$ portd forward 6000 127\.0\.0\.1:5432 (.*)$", README, flags=re.M)
    assert line is not None
    with serve("echo") as echo:
        proxy = ForwardProcess("127.0.0.1:0", f"127.0.0.1:{echo.port}", *shlex.split(line[1]))
        try:
            port = proxy.ready()["forward"]
            assert 89 <= ping_ms(port) <= 300  # latency 100 plus or minus 10
            proxy.signal(signal.SIGTERM)
            assert proxy.wait() == 0
        finally:
            proxy.stop()


def test_the_api_sees_the_configs_forwards_and_faults_them(
    start_daemon: Callable[..., Daemon],
) -> None:
    import http.client
    import json

    with serve("echo") as echo:
        config = CONFIG.format(port=echo.port, toxics="").replace(
            'log_format = "json"', 'log_format = "json"\ntoxiproxy_api = "127.0.0.1:0"'
        )
        daemon = start_daemon(config)
        port = daemon.ready()["db"]  # the API is up before daemon_ready: a client may call it
        (api,) = (e for e in daemon.events if e.get("event") == "toxiproxy_api_ready")
        host, _, api_port = api["address"].rpartition(":")

        def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            connection = http.client.HTTPConnection(host, int(api_port), timeout=10)
            connection.request(method, path, body=None if body is None else json.dumps(body))
            answer = connection.getresponse()
            raw = answer.read()
            connection.close()
            return answer.status, json.loads(raw) if raw else None

        status, proxies = call("GET", "/proxies")
        assert (status, proxies["db"]["listen"]) == (200, f"127.0.0.1:{port}")
        call("POST", "/proxies/db/toxics", {"type": "latency", "attributes": {"latency": 150}})
        assert ping_ms(port) >= 148
        assert call("DELETE", "/proxies/db")[0] == 409  # the config owns it
        assert call("DELETE", "/proxies/db/toxics/latency_downstream")[0] == 204
        assert ping_ms(port) < 100
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_a_reload_that_changes_the_upstream_replaces_the_listener(
    start_daemon: Callable[..., Daemon], tmp_path: Any
) -> None:
    """Only toxics and enabled apply in place; a new upstream is a new listener (on the
    same socket), so live connections keep the upstream they had."""
    with serve("echo") as first, serve("echo") as second:
        daemon = start_daemon(CONFIG.format(port=first.port, toxics=""))
        port = daemon.ready()["db"]
        path = next(tmp_path.glob("portd-*.toml"))
        path.write_text(CONFIG.format(port=second.port, toxics=""), encoding="utf-8")
        daemon.signal(signal.SIGHUP)
        done = daemon.wait_for("reload_complete")
        assert ping_ms(port) < 1000
        (record,) = second.wait_connections(1)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert (done["updated"], done["changed"], done["sockets_handed_over"]) == (0, 1, 1)
    assert record.bytes_in == 4
