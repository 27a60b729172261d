"""The EOF and exit rules again, one by one, with nc and socat as the clients of a real
``portd serve`` on both byte paths: what users run must see what the rules say (a FIN
where the program ended, an RST where it was killed)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from tests.handlers.exec.test_exec_daemon import closed_lines, listener
from tests.support import Daemon, require_tool

PATHS = pytest.mark.parametrize("relay", ["false", "true"], ids=["socket", "relay"])
TOOL_TIMEOUT_S = 30


def serve_program(start: Callable[..., Daemon], command: str, relay: str) -> tuple[Daemon, str]:
    daemon = start(listener(command, f"relay = {relay}\n"))
    return daemon, str(daemon.ready()["run"])


@PATHS
def test_nc_n_fin_closes_stdin_and_the_output_after_it_still_arrives(
    start_daemon: Callable[..., Daemon], relay: str
) -> None:
    nc = require_tool("nc")
    daemon, port = serve_program(
        start_daemon, '["/bin/sh", "-c", "cat; sleep 0.1; echo after-eof"]', relay
    )
    done = subprocess.run([nc, "-N", "127.0.0.1", port], input=b"before\n",
                          capture_output=True, timeout=TOOL_TIMEOUT_S, check=False)  # fmt: skip
    assert (done.returncode, done.stdout) == (0, b"before\nafter-eof\n"), done.stderr
    (line,) = closed_lines(daemon, 1)
    assert line["exit_code"] == 0


def socat_held_open(port: str) -> subprocess.Popen[bytes]:
    """socat between a pipe this test holds open (so socat never reads EOF there) and
    the port; -t 0: once the connection ends, socat ends; -d: a reset is a warning."""
    socat = require_tool("socat")
    return subprocess.Popen([socat, "-d", "-t", "0", "-", f"TCP:127.0.0.1:{port}"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip


def finished(proc: subprocess.Popen[bytes]) -> tuple[int, bytes, bytes]:
    assert proc.stdout is not None
    assert proc.stderr is not None
    out = proc.stdout.read()  # to the end: the connection is over
    err = proc.stderr.read()
    code = proc.wait(TOOL_TIMEOUT_S)
    return code, out, err


@PATHS
def test_the_programs_exit_ends_socat_with_a_fin_while_its_stdin_stays_open(
    start_daemon: Callable[..., Daemon], relay: str
) -> None:
    daemon, port = serve_program(start_daemon, '["printf", "hello"]', relay)
    with socat_held_open(port) as proc:
        code, out, err = finished(proc)
    assert (code, out) == (0, b"hello")
    assert b"reset" not in err  # a FIN
    (line,) = closed_lines(daemon, 1)
    assert (line["exit_code"], line["error"]) == (0, None)


@PATHS
def test_a_killed_program_is_a_reset_socat_reports(
    start_daemon: Callable[..., Daemon], relay: str
) -> None:
    daemon, port = serve_program(
        start_daemon, '["/bin/sh", "-c", "echo partial; sleep 0.1; kill -9 $$"]', relay
    )
    with socat_held_open(port) as proc:
        code, out, err = finished(proc)
    assert (code, out) == (0, b"partial\n")  # socat takes a reset as the end, with a warning
    assert b"W read(" in err
    assert b"Connection reset by peer" in err
    (line,) = closed_lines(daemon, 1)
    assert line["exit_signal"] == "SIGKILL"


@PATHS
def test_socats_reset_hangs_the_program_up(start_daemon: Callable[..., Daemon], relay: str) -> None:
    socat = require_tool("socat")
    daemon, port = serve_program(start_daemon, '["sleep", "30"]', relay)
    # -u: socat half-closes after "x"; linger=0: its close then is an RST.
    done = subprocess.run([socat, "-u", "-", f"TCP:127.0.0.1:{port},linger=0"], input=b"x",
                          capture_output=True, timeout=TOOL_TIMEOUT_S, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = closed_lines(daemon, 1)
    assert line["exit_signal"] == "SIGHUP"
    assert line["program_ms"] < 10_000
