"""Dropping root after binding: [daemon] user/group, as a real process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from portd.privileges import resolve_identity
from tests.support import Daemon, run_portd

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def config_text(daemon: str, *listeners: tuple[str, str]) -> str:
    body = f"[daemon]\n{daemon}\n"
    for name, bind in listeners:
        body += f'[[listener]]\nname = "{name}"\nbind = "{bind}"\nhandler = "echo"\n'
    return body


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def roundtrip(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"hi")
        return sock.recv(2)


@needs_root
@pytest.mark.parametrize("uid", [65534, 61234], ids=["nobody", "no-passwd-entry"])
def test_after_binding_every_id_is_the_target_and_no_capability_is_left(
    public_dir: Path, uid: int
) -> None:
    path = public_dir / "portd.toml"
    path.write_text(config_text(f'user = "{uid}"', ("e", "127.0.0.1:0")))
    daemon = Daemon(["-c", str(path)])
    try:
        port = daemon.ready()["e"]
        assert roundtrip(port) == b"hi"
        status = proc_status(daemon.proc.pid)
        assert status["Uid"].split() == [str(uid)] * 4
        assert status["Gid"].split() == [str(uid)] * 4  # no passwd entry: gid = uid
        assert status["Groups"] == ""
        for capabilities in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            assert int(status[capabilities], 16) == 0, capabilities
    finally:
        daemon.stop()


@needs_root
def test_a_reload_adding_a_privileged_port_after_the_drop_is_rolled_back(public_dir: Path) -> None:
    path = public_dir / "portd.toml"
    path.write_text(config_text('user = "65534"', ("e", "127.0.0.1:0")))
    daemon = Daemon(["-c", str(path)])
    try:
        port = daemon.ready()["e"]
        path.write_text(
            config_text(
                'user = "65534"',
                ("e", "127.0.0.1:0"),
                ("new", "127.0.0.1:0"),
                ("low", "127.0.0.1:80"),
            )
        )
        daemon.signal(signal.SIGHUP)
        failed = daemon.wait_for("reload_failed")
        assert failed["error"].startswith('listener "low": port 80 is privileged')
        started = [e["listener"] for e in daemon.events if e.get("event") == "listener_started"]
        assert started == ["e"]
        assert roundtrip(port) == b"hi"
    finally:
        daemon.stop()


def test_unknown_user_exits_67_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "portd.toml"
    path.write_text(config_text('user = "no-such-user-here"', ("e", "127.0.0.1:0")))
    result = run_portd("serve", "-c", str(path))
    assert result.returncode == 67
    assert result.stderr.splitlines() == [
        "portd: unknown user 'no-such-user-here' (use a name from passwd or a uid)"
    ]


@needs_root
def test_switching_user_without_root_exits_77(public_dir: Path) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to start as another user")
    path = public_dir / "portd.toml"
    path.write_text(config_text('user = "0"', ("e", "127.0.0.1:0")))
    result = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-m", "portd", "serve", "-c", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 77
    assert result.stderr.splitlines() == [
        "portd: switching to 0:0 needs root; started as uid 65534"
    ]


def test_identity_without_group_takes_the_users_primary_group() -> None:
    identity = resolve_identity("root")
    assert (identity.uid, identity.gid) == (0, 0)
    assert resolve_identity("4242", "4343")[:2] == (4242, 4343)


def test_example_config_keys_stay_documented() -> None:
    text = textwrap.dedent((Path(__file__).parent.parent / "config.example.toml").read_text())
    for key in ("user", "group"):
        assert f"\n{key} = " in text or f"\n# {key} = " in text, key


@pytest.mark.parametrize(
    ("key", "value"),
    [("group", "4294967295"), ("user", "4294967295"), ("user", "99999999999999999999"),
     ("group", "a\u0000b"), ("user", "bad:name")],
    ids=["gid-minus-1", "uid-minus-1", "uid-too-big", "nul", "colon"],
)  # fmt: skip
def test_ids_that_mean_unchanged_or_cannot_be_ids_are_config_errors(
    tmp_path: Path, key: str, value: str
) -> None:
    """group = "4294967295" is (gid_t)-1: setresgid left the gid alone, nobody:root."""
    path = tmp_path / "portd.toml"
    escaped = value.replace("\0", "\\u0000")
    daemon = f'{key} = "{escaped}"' if key == "user" else f'user = "nobody"\n{key} = "{escaped}"'
    path.write_text(config_text(daemon, ("e", "127.0.0.1:0")))
    for command in (("check", str(path)), ("serve", "-c", str(path))):
        result = run_portd(*command)
        assert result.returncode == 78, result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith(f"portd: {path}: [daemon]: {key} = "), line


@needs_root
def test_a_receive_directory_the_user_cannot_write_stops_the_start_with_exit_77(
    public_dir: Path,
) -> None:
    """A root-owned 0700 directory with user = nobody started fine, then every upload failed."""
    directory = public_dir / "uploads"
    directory.mkdir(mode=0o700)
    path = public_dir / "portd.toml"
    path.write_text(
        '[daemon]\nuser = "65534"\n[[listener]]\nname = "up"\nbind = "127.0.0.1:0"\n'
        f'handler = "file-receive"\ndirectory = "{directory}"\n'
    )
    result = run_portd("serve", "-c", str(path), "--log-format", "json")
    assert result.returncode == 77, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f'portd: listener "up": file-receive: directory = "{directory}": uid 65534 cannot '
        "create files in it (Permission denied); give that user write access, or let portd "
        "create the directory"
    )
    assert "Traceback" not in result.stderr
    assert list(directory.iterdir()) == []


@needs_root
def test_a_config_the_user_cannot_read_is_a_warning_at_start(public_dir: Path) -> None:
    """Every later reload would fail to read it; say so while someone is watching."""
    path = public_dir / "portd.toml"
    path.write_text(config_text('user = "65534"', ("e", "127.0.0.1:0")))
    path.chmod(0o600)
    daemon = Daemon(["-c", str(path)])
    try:
        daemon.ready()  # the warning comes before daemon_ready
        [warning] = [e for e in daemon.events if e["event"] == "config_unreadable"]
        assert (warning["path"], warning["uid"], warning["level"]) == (str(path), 65534, "warning")
    finally:
        daemon.stop()
