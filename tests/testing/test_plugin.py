"""The pytest plugin, run by pytester the way users run it: fixtures in sync,
pytest-asyncio and anyio tests, leak reports at teardown, 200 fixture cycles without a
leaked fd or thread, and pytest-xdist workers that never share a port."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
addopts = -p no:cacheprovider -p no:hypothesispytest -p no:pytest_httpserver
asyncio_default_fixture_loop_scope = function
filterwarnings = error
portd_leak_grace_s = 0.1
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    return pytester


def test_the_plugin_is_registered_through_its_entry_point(project: pytest.Pytester) -> None:
    listed = project.runpytest_subprocess("--fixtures").stdout.str()
    for name in ("portd_server", "echo_server", "http_server", "refuse_server", "slicer_server"):
        assert f"\n{name} -- " in listed


SYNC_TESTS = """
import socket
import urllib.request

import pytest


def test_echo(echo_server):
    with socket.create_connection(echo_server.address, timeout=5) as client:
        client.sendall(b"sync")
        assert client.recv(4) == b"sync"
    (record,) = echo_server.wait_connections(1)
    assert (record.bytes_in, record.how_it_ended) == (4, "closed")


def test_udp_echo(udp_echo_server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.sendto(b"dgram", udp_echo_server.address)
        assert client.recv(64) == b"dgram"


def test_http(http_server):
    with urllib.request.urlopen(http_server.url + "/", timeout=5) as response:
        assert response.read() == b"Hello from portd\\n"


def test_recorder(recorder_server):
    with socket.create_connection(recorder_server.address, timeout=5) as client:
        client.sendall(b"remember me")
    assert recorder_server.wait_connections(1)[0].received == b"remember me"


def test_faults(reset_server, refuse_server, blackhole_server):
    with pytest.raises(ConnectionResetError):  # at connect() or at recv(): whichever is later
        with socket.create_connection(reset_server.address, timeout=5) as client:
            client.recv(1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(refuse_server.address, timeout=5)
    with socket.create_connection(blackhole_server.address, timeout=0.1) as client:
        with pytest.raises(TimeoutError):
            client.recv(1)


def test_factory_with_options(portd_server):
    server = portd_server("recorder", reply="hi", reply_after="connect")
    other = portd_server("echo")
    assert server.port != other.port
    with socket.create_connection(server.address, timeout=5) as client:
        assert client.recv(2) == b"hi"
"""


def test_fixtures_in_sync_tests(project: pytest.Pytester) -> None:
    project.makepyfile(test_sync=SYNC_TESTS)
    project.runpytest_subprocess().assert_outcomes(passed=6)


ASYNCIO_TESTS = """
import asyncio

import pytest


@pytest.mark.asyncio
async def test_echo(echo_server):
    reader, writer = await asyncio.open_connection(echo_server.host, echo_server.port)
    writer.write(b"asyncio")
    assert await reader.readexactly(7) == b"asyncio"
    writer.close()
    await writer.wait_closed()
    (record,) = await echo_server.wait_connections_async(1)
    assert record.bytes_out == 7


@pytest.mark.asyncio
async def test_latency_times_out(portd_server):
    server = portd_server("latency", delay_s=1.0)
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"x")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.05)
    writer.close()
    await writer.wait_closed()
"""


def test_fixtures_in_pytest_asyncio_tests(project: pytest.Pytester) -> None:
    project.makepyfile(test_asyncio=ASYNCIO_TESTS)
    project.runpytest_subprocess().assert_outcomes(passed=2)


ANYIO_TESTS = """
import anyio
import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param


async def test_echo(echo_server):
    async with await anyio.connect_tcp(echo_server.host, echo_server.port) as client:
        await client.send(b"anyio")
        assert await client.receive() == b"anyio"
    assert len(await echo_server.wait_connections_async(1)) == 1


async def test_stall_times_out(stall_server):
    async with await anyio.connect_tcp(stall_server.host, stall_server.port) as client:
        await client.send(b"request")
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.05):
                await client.receive()
"""


def test_fixtures_in_anyio_tests(project: pytest.Pytester) -> None:
    """Under trio, wait_connections_async failed with "no running event loop"."""
    pytest.importorskip("trio")
    project.makepyfile(test_anyio=ANYIO_TESTS)
    project.runpytest_subprocess().assert_outcomes(passed=4)  # asyncio and trio


LEAKY_TESTS = """
import socket

import pytest

kept = []


@pytest.fixture(autouse=True, scope="module")
def close_what_was_kept():
    yield
    for client in kept:
        client.close()


def test_leaves_a_connection_open(echo_server):
    client = socket.create_connection(echo_server.address, timeout=5)
    client.sendall(b"abc")
    assert client.recv(3) == b"abc"
    kept.append(client)


def test_fails_and_leaks(echo_server):
    kept.append(socket.create_connection(echo_server.address, timeout=5))
    assert False, "the test's own failure"


def test_closes_properly(echo_server):
    with socket.create_connection(echo_server.address, timeout=5):
        pass
"""


def test_a_leak_errors_the_test_at_teardown_with_a_clear_report(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(test_leaky=LEAKY_TESTS)
    result = project.runpytest_subprocess()
    result.assert_outcomes(passed=2, failed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaves_a_connection_open*",
        "echo server on 127.0.0.1:* (tcp) leaked:",
        "  1 connections still open (the client never closed them):",
        "    #1 from 127.0.0.1:*: 3 bytes in, 3 out",
        "  1 sockets still open:",
        "    fd *: a client socket 127.0.0.1:* connected to the server at 127.0.0.1:*",
    ])  # fmt: skip
    assert "ERROR at teardown of test_fails_and_leaks" not in result.stdout.str()


def test_leak_checks_can_be_turned_off(project: pytest.Pytester) -> None:
    project.makepyfile(test_leaky=LEAKY_TESTS)
    project.runpytest_subprocess("-o", "portd_check_leaks=false").assert_outcomes(
        passed=2, failed=1
    )


CYCLES_TESTS = """
import os
import socket
import threading

import pytest

before = {}


def state():
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, closed by now
            pass
    return set(fds.items()), set(threading.enumerate())


def test_first_one_warms_up(echo_server):
    with socket.create_connection(echo_server.address, timeout=5):
        pass


def test_snapshot():
    before["fds"], before["threads"] = state()


@pytest.mark.parametrize("cycle", range(200))
def test_cycle(echo_server, cycle):
    with socket.create_connection(echo_server.address, timeout=5) as client:
        client.sendall(b"%d" % cycle)
        assert client.recv(8) == b"%d" % cycle


def test_nothing_leaked():
    fds, threads = state()
    assert fds - before["fds"] == set()  # what closed meanwhile was never ours
    assert threads - before["threads"] == set()
"""


def test_200_fixture_cycles_leak_no_fd_or_thread(project: pytest.Pytester) -> None:
    project.makepyfile(test_cycles=CYCLES_TESTS)
    project.runpytest_subprocess("-p", "no:randomly").assert_outcomes(passed=203)


XDIST_TESTS = """
import os
import socket
import time

import pytest


@pytest.mark.parametrize("index", range(100))
def test_own_port(recorder_server, index):
    started = time.monotonic_ns()
    token = f"{os.environ['PYTEST_XDIST_WORKER']}-{index}".encode()
    with socket.create_connection(recorder_server.address, timeout=5) as client:
        client.sendall(token)
    assert recorder_server.wait_connections(1)[0].received == token
    line = f"{os.environ['PYTEST_XDIST_WORKER']} {recorder_server.port} {started} "
    with open(os.environ["PORTS_FILE"], "a") as ports:
        ports.write(line + f"{time.monotonic_ns()}\\n")
"""


def test_xdist_workers_never_share_a_port(
    project: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("xdist")
    ports_file = tmp_path / "ports.txt"
    project.makepyfile(test_xdist=XDIST_TESTS)
    monkeypatch.setenv("PORTS_FILE", str(ports_file))
    result = project.runpytest_subprocess("-n", "2", "--dist", "each")
    result.assert_outcomes(passed=200)
    rows = [line.split() for line in ports_file.read_text().splitlines()]
    by_worker = {worker: sum(1 for row in rows if row[0] == worker) for worker, *_ in rows}
    assert by_worker == {"gw0": 100, "gw1": 100}
    spans = [(worker, int(port), int(start), int(end)) for worker, port, start, end in rows]
    clashes = [
        (a, b)
        for a, b in combinations(spans, 2)
        if a[0] != b[0] and a[1] == b[1] and a[2] < b[3] and b[2] < a[3]
    ]
    assert clashes == [], json.dumps(clashes)


def test_the_plugin_imports_nothing_heavy() -> None:
    """Start-up cost: the server machinery (structlog, uvloop, the listener) loads only
    when a fixture is used, not when pytest loads the plugin."""
    heavy = ["structlog", "uvloop", "anyio", "portd.listeners", "portd.testing.server"]
    check = (
        "import sys, pytest, portd.testing.plugin; "
        f"print(sorted(set({heavy!r}) & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


SETUP_FAILS = """
import socket

import pytest


@pytest.fixture
def client(echo_server):
    sock = socket.create_connection(echo_server.address, timeout=5)
    raise RuntimeError("setup went wrong")  # the client socket is left open


def test_uses_it(client):
    pass
"""


def test_a_fixture_that_fails_in_setup_gets_no_second_leak_report(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(test_setup=SETUP_FAILS)
    # In a subprocess: the socket left open on purpose must not outlive the inner run,
    # or its ResourceWarning surfaces in whichever later test the collector runs in.
    result = project.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    assert "setup went wrong" in result.stdout.str()
    assert "leaked" not in result.stdout.str()
