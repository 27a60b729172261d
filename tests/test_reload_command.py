"""``portd reload`` against a real daemon started by hand: it finds the control socket from
``-c FILE`` alone, waits for the outcome, exits 0 once the new config serves, or with
``portd check``'s lines and exit code while the old config keeps serving."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import Daemon, run_portd

StartDaemon = Callable[..., Daemon]


def echo_listener(name: str, bind: str = "127.0.0.1:0", extra: str = "") -> str:
    return f'[[listener]]\nname = "{name}"\nbind = "{bind}"\nhandler = "echo"\n{extra}'


def config_of(daemon: Daemon) -> Path:
    return Path(daemon.args[daemon.args.index("-c") + 1])


def listener_names(config: Path) -> list[str]:
    shown = run_portd("status", "-c", str(config), "--json")
    assert shown.returncode == 0, shown.stderr
    return [listener["name"] for listener in json.loads(shown.stdout)["listeners"]]


def echoes(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"still here")
        client.shutdown(socket.SHUT_WR)
        return client.recv(64)


def test_reload_exits_0_once_the_new_config_serves(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(echo_listener("a"))
    daemon.ready()
    config = config_of(daemon)
    config.write_text(echo_listener("a") + echo_listener("b"))
    done = run_portd("reload", "-c", str(config))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    # The answer came after the reload: its log lines are already there.
    daemon.wait_for("reload_complete", timeout=5)
    assert listener_names(config) == ["a", "b"]


def test_a_bad_config_exits_78_with_checks_lines_and_the_old_config_serves(
    start_daemon: StartDaemon,
) -> None:
    daemon = start_daemon(echo_listener("a"))
    port = daemon.ready()["a"]
    config = config_of(daemon)
    config.write_text(echo_listener("a", extra="backlog = 0\n") + echo_listener("b", "nowhere"))
    expected = run_portd("check", str(config))
    assert expected.returncode == 78
    done = run_portd("reload", "-c", str(config))
    assert done.returncode == 78
    assert done.stdout == ""
    assert done.stderr == expected.stderr
    assert len(done.stderr.splitlines()) == 2
    assert "Traceback" not in done.stderr
    assert echoes(port) == b"still here"
    assert listener_names(config) == ["a"]
    assert daemon.proc.poll() is None


def test_a_busy_port_exits_69_and_nothing_changes(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(echo_listener("a"))
    port = daemon.ready()["a"]
    config = config_of(daemon)
    with socket.create_server(("127.0.0.1", 0)) as holder:
        busy = holder.getsockname()[1]
        config.write_text(echo_listener("a") + echo_listener("b", f"127.0.0.1:{busy}"))
        done = run_portd("reload", "-c", str(config))
    assert done.returncode == 69
    (line,) = done.stderr.splitlines()
    assert line.startswith('portd: listener "b": ')
    assert f"127.0.0.1:{busy} (tcp) is already in use by pid {os.getpid()}" in line
    assert echoes(port) == b"still here"
    assert listener_names(config) == ["a"]


def test_status_and_reload_find_a_daemon_started_by_hand(start_daemon: StartDaemon) -> None:
    """No control_socket setting: the per-user socket of that config file."""
    daemon = start_daemon(echo_listener("a"))
    daemon.ready()
    ready = daemon.wait_for("control_socket_ready")
    assert ready["path"].startswith(os.environ["XDG_RUNTIME_DIR"] + "/portd/control-")
    assert listener_names(config_of(daemon)) == ["a"]


def test_reload_without_a_daemon_exits_69_naming_where_it_looked(tmp_path: Path) -> None:
    config = tmp_path / "portd.toml"
    config.write_text(echo_listener("a"))
    done = run_portd("reload", "-c", str(config))
    assert done.returncode == 69
    (line,) = done.stderr.splitlines()
    assert line.startswith("portd: no daemon answers on ")
    assert "/portd/control-" in line


def test_reload_of_a_config_without_control_socket_says_so(tmp_path: Path) -> None:
    config = tmp_path / "portd.toml"
    config.write_text('[daemon]\ncontrol_socket = ""\n' + echo_listener("a"))
    done = run_portd("reload", "-c", str(config))
    assert done.returncode == 69
    assert done.stderr == (f'portd: {config} turns the control socket off (control_socket = "")\n')


def test_only_root_and_the_daemons_user_may_reload(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to ask as another user")
    name = f"@portd-reload-{os.getpid()}-{tmp_path.name}"
    config = f'[daemon]\ncontrol_socket = "{name}"\ncontrol_socket_abstract = true\n'
    daemon = start_daemon(config + echo_listener("a"))
    daemon.ready()
    nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    asked = subprocess.run(
        [*nobody, sys.executable, "-m", "portd", "reload", "--socket", name],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert asked.returncode == 69
    assert asked.stderr == f"portd: {name}: uid 65534 may not ask this daemon\n"
    assert not [e for e in daemon.events if e.get("event") == "reload_started"]
