"""What a program starts with: its environment (ucspi-tcp's names), its stderr (logged,
discarded, or the connection), its user (uid, gid and groups read in /proc)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import pytest

from portd.testing import serve
from tests.handlers.exec.support import PATHS, exchange

ENV = ["/usr/bin/env"]


def environment(output: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.decode().splitlines())


@PATHS
def test_the_program_gets_the_connection_in_ucspi_tcps_names(relay: bool) -> None:
    with serve("exec", command=ENV, relay=relay) as server:
        with socket.create_connection(server.address, timeout=10) as client:
            client.shutdown(socket.SHUT_WR)
            here = client.getsockname()
            env = environment(client.makefile("rb").read())
        (record,) = server.wait_connections(1)
    assert env == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PROTO": "TCP",
        "TCPREMOTEIP": "127.0.0.1",
        "TCPREMOTEPORT": str(here[1]),
        "TCPLOCALIP": "127.0.0.1",
        "TCPLOCALPORT": str(server.port),
        "PORTD_LISTENER": server.running.config.name,
        "PORTD_CONN_ID": str(record.conn_id),
    }


def test_env_adds_variables_and_wins_over_portds() -> None:
    extra = {"LANG": "C.UTF-8", "PATH": "/bin", "PORTD_LISTENER": "mine"}
    with serve("exec", command=ENV, env=extra) as server:
        env = environment(exchange(server.address, b""))
    assert (env["LANG"], env["PATH"], env["PORTD_LISTENER"]) == ("C.UTF-8", "/bin", "mine")
    assert env["PROTO"] == "TCP"


def test_portds_own_environment_reaches_the_program_only_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PORTD_TEST_OWN", "from-portd")
    with serve("exec", command=ENV) as server:
        assert "PORTD_TEST_OWN" not in environment(exchange(server.address, b""))
    with serve("exec", command=ENV, inherit_env=True) as server:
        assert environment(exchange(server.address, b""))["PORTD_TEST_OWN"] == "from-portd"


def test_a_unix_socket_peer_is_named_by_pid_and_uid(tmp_path: Path) -> None:
    with (
        serve("exec", bind=f"unix:{tmp_path}/s.sock", command=ENV) as server,
        socket.socket(socket.AF_UNIX) as client,
    ):
        client.connect(server.address)
        client.shutdown(socket.SHUT_WR)
        env = environment(client.makefile("rb").read())
    assert env["PROTO"] == "UNIX"
    assert env["UNIXREMOTEPID"] == str(os.getpid())
    assert env["UNIXREMOTEUID"] == str(os.getuid())
    assert env["UNIXLOCALPATH"] == f"{tmp_path}/s.sock"
    assert "TCPREMOTEIP" not in env


def test_the_shell_form_runs_under_sh_c() -> None:
    with serve("exec", command="echo $PROTO | tr A-Z a-z", shell=True) as server:  # noqa: S604
        assert exchange(server.address, b"") == b"tcp\n"


STDERR_PROGRAM = [
    sys.executable, "-c", "import sys; sys.stderr.write('err1\\nerr2'); print('out', flush=True)",
]  # fmt: skip


@PATHS
def test_stderr_connection_goes_to_the_client(relay: bool) -> None:
    with serve("exec", command=STDERR_PROGRAM, stderr="connection", relay=relay) as server:
        assert exchange(server.address, b"") == b"err1\nerr2out\n"


@PATHS
def test_stderr_null_is_dropped(relay: bool, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.INFO, "portd.testing"),
        serve("exec", command=STDERR_PROGRAM, stderr="null", relay=relay) as server,
    ):
        assert exchange(server.address, b"") == b"out\n"
        server.wait_connections(1)
    assert "program_stderr" not in caplog.text


@PATHS
def test_stderr_log_is_lines_with_the_listener_and_connection(
    relay: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, "portd.testing"),
        serve("exec", command=STDERR_PROGRAM, relay=relay) as server,
    ):
        assert exchange(server.address, b"") == b"out\n"
        (record,) = server.wait_connections(1)
    lines = [r.getMessage() for r in caplog.records if "program_stderr" in r.getMessage()]
    assert len(lines) == 2
    for line, text in zip(lines, ("err1", "err2"), strict=True):
        assert f"line='{text}'" in line
        assert f"conn_id={record.conn_id}" in line
        assert f"listener='{server.running.config.name}'" in line


def test_stderr_log_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """150 lines and one of 5,000 bytes: 100 lines kept, each cut at 1 KiB, one line
    counting the rest; the program never blocks on its stderr."""
    script = "import sys\nsys.stderr.write('x' * 5000 + '\\n' + 'line\\n' * 149)\nprint('done')"
    with (
        caplog.at_level(logging.INFO, "portd.testing"),
        serve("exec", command=[sys.executable, "-c", script]) as server,
    ):
        assert exchange(server.address, b"") == b"done\n"
        server.wait_connections(1)
    messages = [r.getMessage() for r in caplog.records]
    kept = [m for m in messages if m.startswith("program_stderr ")]
    assert len(kept) == 100
    assert f"line='{'x' * 1024}'" in kept[0]
    assert "cut_bytes=3976" in kept[0]
    (dropped,) = [m for m in messages if m.startswith("program_stderr_dropped")]
    assert "lines=50" in dropped


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")


@needs_root
@PATHS
def test_user_nobody_runs_the_program_as_nobody_with_no_other_group(relay: bool) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    with serve("exec", command=["cat", "/proc/self/status"], user="nobody", relay=relay) as s:
        status = dict(
            line.split(":\t", 1) for line in exchange(s.address, b"").decode().splitlines()
        )
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
    assert status["Groups"].strip() == ""


@needs_root
def test_user_sets_home_user_and_shell_as_systemd_does() -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    with serve("exec", command=ENV, user="nobody") as server:
        env = environment(exchange(server.address, b""))
    assert (env["USER"], env["LOGNAME"], env["HOME"]) == ("nobody", "nobody", nobody.pw_dir)
    assert env["SHELL"] == nobody.pw_shell


def test_cwd_is_the_programs_working_directory(tmp_path: Path) -> None:
    with serve("exec", command=["pwd"], cwd=str(tmp_path)) as server:
        assert exchange(server.address, b"") == f"{tmp_path}\n".encode()
