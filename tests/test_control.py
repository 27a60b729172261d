"""The control socket: it removes nothing but a stale socket, refuses directories another
user could change, answers only root and its own user, and bounds its clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from portd import control
from portd.control import ControlServer, query
from portd.errors import AddressInUseError, ControlError
from tests.support import Daemon, run_portd, write_config

ECHO = '[[listener]]\nname = "e"\nbind = "127.0.0.1:0"\nhandler = "echo"\n'


def config_with_control(directory: Path, path: str, extra: str = "") -> Path:
    return write_config(directory, f'[daemon]\ncontrol_socket = "{path}"\n{extra}{ECHO}')


def serve_fails(config: Path) -> subprocess.CompletedProcess[str]:
    return run_portd("serve", "-c", str(config))


def test_a_regular_file_at_the_path_is_never_removed(tmp_path: Path) -> None:
    precious = tmp_path / "control.sock"
    precious.write_text("important data\n")
    result = serve_fails(config_with_control(tmp_path, str(precious)))
    assert result.returncode == 69
    assert result.stderr.splitlines() == [
        f"portd: control socket: {precious} exists and is not a socket; "
        "portd removes only stale sockets"
    ]
    assert precious.read_text() == "important data\n"


def test_a_symlink_at_the_path_is_never_followed_or_removed(tmp_path: Path) -> None:
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0\n")
    link = tmp_path / "control.sock"
    link.symlink_to(target)
    result = serve_fails(config_with_control(tmp_path, str(link)))
    assert result.returncode == 69
    assert "exists and is a symlink; portd removes only stale sockets" in result.stderr
    assert link.is_symlink()
    assert target.read_text() == "root:x:0:0\n"


def test_a_stale_socket_is_replaced_and_the_daemon_answers(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays; nobody accepts on it
    daemon = Daemon(["-c", str(config_with_control(tmp_path, str(path)))])
    try:
        daemon.ready()
        assert [x["name"] for x in query(str(path))["listeners"]] == ["e"]
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        daemon.stop()


def test_a_live_socket_is_in_use_and_names_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as holder:
        holder.bind(str(path))
        holder.listen()
        result = serve_fails(config_with_control(tmp_path, str(path)))
    assert result.returncode == 69
    assert result.stderr.splitlines() == [
        f"portd: control socket: {path} is in use by pid {os.getpid()}"
    ]


@pytest.mark.parametrize("danger", ["other-owner", "group-writable"])
def test_a_directory_another_user_could_change_is_refused(tmp_path: Path, danger: str) -> None:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    if danger == "other-owner":
        if os.geteuid() != 0:
            pytest.skip("needs root to give the directory away")
        os.chown(directory, 65534, 65534)
        expected = f"{directory} belongs to uid 65534, who could replace the socket"
    else:
        directory.chmod(0o770)
        expected = f"{directory} is writable by others (mode 0770), who could replace the socket"
    result = serve_fails(config_with_control(tmp_path, str(directory / "control.sock")))
    assert result.returncode == 69
    assert expected in result.stderr
    assert not (directory / "control.sock").exists()


def test_a_sticky_shared_directory_is_allowed(tmp_path: Path) -> None:
    """In a sticky directory (as /tmp) nobody can remove or rename another user's entry."""
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o1777)
    path = directory / "control.sock"
    daemon = Daemon(["-c", str(config_with_control(tmp_path, str(path)))])
    try:
        daemon.ready()
        assert query(str(path))["listeners"]
    finally:
        daemon.stop()


def test_the_socket_file_goes_at_exit_but_not_a_file_that_replaced_it(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    daemon = Daemon(["-c", str(config_with_control(tmp_path, str(path)))])
    try:
        daemon.ready()
        path.unlink()
        path.write_text("someone else's now\n")
        daemon.signal()
        assert daemon.wait() == 0
    finally:
        daemon.stop()
    assert path.read_text() == "someone else's now\n"


def test_an_abstract_name_answers_its_own_user_only(tmp_path: Path) -> None:
    name = f"@portd-test-{os.getpid()}-{tmp_path.name}"
    config = config_with_control(tmp_path, name, "control_socket_abstract = true\n")
    daemon = Daemon(["-c", str(config)])
    try:
        daemon.ready()
        shown = run_portd("status", "--socket", name)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines()[2].split()[:2] == ["e", "tcp"]
        setpriv = shutil.which("setpriv")
        if os.geteuid() != 0 or setpriv is None:
            return
        nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
        other = subprocess.run(
            [*nobody, sys.executable, "-m", "portd", "status", "--socket", name],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert other.returncode == 69
        assert other.stderr.splitlines() == [f"portd: {name}: uid 65534 may not ask this daemon"]
    finally:
        daemon.stop()


def snapshot() -> dict[str, object]:
    return {"listeners": []}


@pytest.mark.asyncio
async def test_silent_clients_are_cut_after_the_request_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "REQUEST_TIMEOUT_S", 0.2)
    path = str(tmp_path / "control.sock")
    server = ControlServer(path, snapshot)
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(path)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()
    finally:
        server.close()
    with pytest.raises(FileNotFoundError):
        os.lstat(path)  # removed with the server


@pytest.mark.asyncio
async def test_clients_beyond_the_cap_are_closed_at_once_and_the_rest_answered(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "control.sock")
    server = ControlServer(path, snapshot)
    await server.start()
    held = [await asyncio.open_unix_connection(path) for _ in range(control.MAX_CLIENTS)]
    try:
        reader, writer = await asyncio.open_unix_connection(path)
        with contextlib.suppress(ConnectionResetError):  # aborted: just as closed
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        first_reader, first_writer = held[0]
        first_writer.write(b"status\n")
        assert b'"listeners": []' in await asyncio.wait_for(first_reader.read(), 5)
    finally:
        for _, held_writer in held:
            held_writer.close()
        server.close()


@pytest.mark.asyncio
async def test_a_second_server_on_a_live_path_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")
    first = ControlServer(path, snapshot)
    await first.start()
    try:
        with pytest.raises(AddressInUseError, match="is in use by pid"):
            await ControlServer(path, snapshot).start()
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        first.close()


def test_query_without_a_daemon_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="no daemon answers on"):
        query(str(tmp_path / "none.sock"))
