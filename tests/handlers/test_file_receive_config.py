"""file-receive's options: sizes, modes and templates are checked at load (exit 78, one
line each), and a directory that cannot be used stops `portd serve` with one line."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from portd.errors import OptionError
from portd.handlers.file_receive import check_file_mode
from portd.options import SIZE_RULE, parse_size
from tests.support import Daemon, run_portd, write_config

StartDaemon = Callable[..., Daemon]
TEMPLATE_RULE_END = "fields {utc} {peer} {host} {port} {conn_id} {listener}"


def receive_listener(directory: object, extra: str = "") -> str:
    return textwrap.dedent(f"""
        [[listener]]
        name = "up"
        bind = "127.0.0.1:0"
        handler = "file-receive"
        directory = "{directory}"
    """) + textwrap.dedent(extra)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1234, 1234),
        ("1234", 1234),
        ("1B", 1),
        ("500MB", 500_000_000),
        ("500 MB", 500_000_000),
        ("1KB", 1000),
        ("1KiB", 1024),
        ("1GiB", 1 << 30),
        ("2TB", 2 * 10**12),
        ("1TiB", 1 << 40),
        ("1.5KiB", 1536),
        ("0.5GB", 500_000_000),
        ("1.0001KB", 1000),  # a fraction of a byte is dropped
        (" 3MiB ", 3 << 20),
    ],
)
def test_sizes_are_integers_or_strings_with_decimal_or_binary_units(value: Any, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    "value", [-1, True, 1.5, "1gb", "1 GiB B", "GiB", "1e3", "", "1.GiB", "-1MB", "1PB", "\u0661"]
)
def test_anything_else_is_not_a_size(value: Any) -> None:
    with pytest.raises(OptionError) as caught:
        parse_size(value)
    assert str(caught.value) == SIZE_RULE


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o400, 0o000])
def test_private_and_read_only_shared_modes_are_allowed(mode: int) -> None:
    assert check_file_mode(mode) == mode


@pytest.mark.parametrize("mode", [0o664, 0o602, 0o700, 0o744, 0o4600, 0o1600, 600])
def test_writable_by_others_executable_or_special_modes_are_refused(mode: int) -> None:
    with pytest.raises(OptionError, match=rf"^0o{mode:o} allows group/world writing"):
        check_file_mode(mode)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('max_bytes = "1gb"', SIZE_RULE),
        ("max_bytes = 1.5", SIZE_RULE),
        ('min_free_bytes = "-1MB"', SIZE_RULE),
        (
            "file_mode = 0o664",  # the line shows TOML's value, 436, and the message octal
            "0o664 allows group/world writing, execution or special bits; expected at most "
            "0o644, such as 0o600 or 0o640 (TOML octal: 0o600)",
        ),
        ('file_name = "{utc}-{nope}"', "unknown field {nope}; expected literal text"),
        ('file_name = "../{utc}"', "expected literal text"),
        ('keep_partial = "yes"', "expected true or false"),
    ],
)
def test_bad_options_exit_78_with_one_line_naming_key_and_value(
    tmp_path: Path, setting: str, message: str
) -> None:
    path = write_config(tmp_path, receive_listener(tmp_path / "in", setting))
    result = run_portd("check", str(path))
    assert result.returncode == 78
    key, _, value = setting.partition(" = ")
    value = "436" if value == "0o664" else value
    [line] = result.stderr.splitlines()
    assert line.startswith(f'portd: {path}: [[listener]] #1 "up": {key} = {value}: {message}')
    assert result.stdout == ""


def test_a_relative_directory_is_refused_at_load(tmp_path: Path) -> None:
    path = write_config(tmp_path, receive_listener("incoming"))
    result = run_portd("check", str(path))
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        f'portd: {path}: [[listener]] #1 "up": directory = "incoming": expected an absolute path'
    ]


def test_file_receive_serves_tcp_only(tmp_path: Path) -> None:
    path = write_config(tmp_path, receive_listener(tmp_path, 'protocol = "udp"'))
    result = run_portd("check", str(path))
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        f'portd: {path}: [[listener]] #1 "up": protocol = "udp": '
        "handler 'file-receive' serves tcp only"
    ]


def _unusable(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A directory path that cannot be used, and the reason portd gives."""
    if kind == "file":
        (tmp_path / "file").write_bytes(b"")
        return tmp_path / "file", "is not a directory"
    if kind == "symlink":
        (tmp_path / "real").mkdir()
        (tmp_path / "link").symlink_to(tmp_path / "real")
        return tmp_path / "link", "is a symbolic link (not followed)"
    return tmp_path / "missing" / "in", "does not exist and its parent is missing"


@pytest.mark.parametrize("command", ["serve", "check"])
@pytest.mark.parametrize("kind", ["file", "symlink", "no-parent"])
def test_an_unusable_directory_stops_check_and_serve_alike_with_exit_78_and_one_line(
    tmp_path: Path, kind: str, command: str
) -> None:
    """Found at load, without creating anything: `portd check` refuses what serve would."""
    directory, reason = _unusable(tmp_path, kind)
    path = write_config(tmp_path, receive_listener(directory))
    result = run_portd(command, *(["-c"] if command == "serve" else []), str(path))
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        f'portd: {path}: [[listener]] #1 "up": file-receive: directory = "{directory}": {reason}'
    ]
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("command", ["serve", "check"])
def test_a_missing_directory_option_is_a_config_error_at_load(tmp_path: Path, command: str) -> None:
    """`portd check` finds it too: required options are checked with the rest of the file."""
    path = write_config(tmp_path, '[[listener]]\nbind = "127.0.0.1:0"\nhandler = "file-receive"\n')
    result = run_portd(command, *(["-c"] if command == "serve" else []), str(path))
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        f"portd: {path}: [[listener]] #1: missing required key 'directory' "
        "(absolute path; created 0700 when missing)"
    ]


def test_two_daemons_cannot_share_a_directory(tmp_path: Path, start_daemon: StartDaemon) -> None:
    """The second would remove the first one's live temporaries as stale."""
    directory = tmp_path / "in"
    start_daemon(receive_listener(directory)).ready()
    path = write_config(tmp_path, receive_listener(directory), name="second.toml")
    result = run_portd("serve", "-c", str(path))
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        f'portd: listener "up": file-receive: directory = "{directory}": '
        "is in use by another process"
    ]
    assert list(directory.iterdir()) == []
