"""Hostile and careless inputs through every command and the config loader: each is an
expected failure, so each ends in one line (argparse may lead with its usage line),
the documented exit code, and never a traceback.

Arguments come as bytes, the way a shell passes them: b"\\xff" is not UTF-8 and reaches
portd as a surrogate, which used to crash the IDNA codec inside getaddrinfo().
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support import PORTD, require_tool

BIG = b"9" * 5000  # past Python's 4,300-digit int() limit
NOT_UTF8 = b"\xff\xfe"
TOML_BIG = "9" * 5000
LISTENER = '[[listener]]\nbind = "127.0.0.1:0"\nhandler = "echo"\n'

# (id, argv after `portd`, exit code)
COMMANDS: list[tuple[str, list[bytes], int]] = [
    ("listen-not-utf8-bind", [b"listen", NOT_UTF8], 64),
    ("listen-huge-port", [b"listen", BIG], 64),
    ("listen-6-echo-on-ipv4", [b"listen", b"-6", b"--echo", b"127.0.0.1:0"], 64),
    ("listen-4-echo-on-ipv6", [b"listen", b"-4", b"--echo", b"[::1]:0"], 64),
    ("listen-6-on-ipv4", [b"listen", b"-6", b"127.0.0.1:0"], 64),
    (
        "listen-set-huge-int",
        [b"listen", b"--echo", b"--set", b"max_connections=" + BIG, b"127.0.0.1:0"],
        64,
    ),
    (
        "listen-set-huge-size",
        [
            b"listen",
            b"--handler",
            b"recorder",
            b"--set",
            b"max_bytes=" + BIG + b"MiB",
            b"127.0.0.1:0",
        ],
        64,
    ),
    (
        "listen-set-not-utf8",
        [b"listen", b"--http", b"--set", b"body=" + NOT_UTF8, b"--set", b"nope=1", b"127.0.0.1:0"],
        64,
    ),
    ("listen-q-inf", [b"listen", b"-q", b"inf", b"127.0.0.1:0"], 64),
    ("listen-max-clients-huge", [b"listen", b"-k", b"--max-clients", BIG, b"127.0.0.1:0"], 64),
    ("connect-w-inf", [b"connect", b"-w", b"inf", b"127.0.0.1", b"9"], 64),
    ("connect-w-nan", [b"connect", b"-w", b"nan", b"127.0.0.1", b"9"], 64),
    ("connect-w-huge", [b"connect", b"-w", b"1e300", b"127.0.0.1", b"9"], 64),
    ("connect-not-utf8-host", [b"connect", NOT_UTF8, b"80"], 1),
    ("connect-newline-host", [b"connect", b"a\nb", b"80"], 1),
    ("connect-huge-port", [b"connect", b"127.0.0.1", BIG], 64),
    ("connect-not-utf8-port", [b"connect", b"127.0.0.1", NOT_UTF8], 64),
    ("scan-not-utf8-host", [b"scan", NOT_UTF8, b"80"], 1),
    ("scan-huge-port", [b"scan", b"127.0.0.1", BIG], 64),
    ("scan-timeout-inf", [b"scan", b"127.0.0.1", b"9", b"--timeout", b"inf"], 64),
    ("scan-concurrency-huge", [b"scan", b"127.0.0.1", b"9", b"--concurrency", BIG], 64),
    ("wait-timeout-inf", [b"wait", b"127.0.0.1:9", b"--timeout", b"inf"], 64),
    ("wait-interval-huge", [b"wait", b"127.0.0.1:9", b"--interval", b"1e308"], 64),
    ("wait-not-utf8-host", [b"wait", NOT_UTF8 + b":9", b"--timeout", b"0.2"], 64),
    ("wait-huge-port", [b"wait", b"127.0.0.1:" + BIG], 64),
    ("services-huge-number", [b"services", BIG], 1),
    ("services-not-utf8", [b"services", NOT_UTF8], 1),
    ("ports-huge-port", [b"ports", b"--port", BIG], 64),
    ("status-not-utf8-socket", [b"status", b"--socket", b"/nonexistent/" + NOT_UTF8], 69),
    ("check-not-utf8-path", [b"check", b"/nonexistent/" + NOT_UTF8], 78),
    ("serve-missing-config", [b"serve", b"-c", b"/nonexistent/portd.toml"], 78),
    ("units-missing-config", [b"units", b"/nonexistent/portd.toml"], 78),
]

# (id, config text, exit code of `check`, `serve -c` and `units`)
CONFIGS: list[tuple[str, str | bytes, int]] = [
    ("deep-nesting", "a = " + "[" * 600 + "]" * 600 + "\n", 78),
    ("nul-in-bind", '[[listener]]\nbind = "127.0.0.1:\\u0000"\nhandler = "echo"\n', 78),
    ("nul-in-name", LISTENER + 'name = "a\\u0000b"\n', 78),
    ("nul-in-handler", '[[listener]]\nbind = "127.0.0.1:0"\nhandler = "echo\\u0000"\n', 78),
    ("nul-in-user", '[daemon]\nuser = "a\\u0000b"\n' + LISTENER, 78),
    ("nul-in-group", '[daemon]\nuser = "nobody"\ngroup = "\\u0000"\n' + LISTENER, 78),
    ("nul-in-control-socket", '[daemon]\ncontrol_socket = "/a\\u0000"\n' + LISTENER, 78),
    (
        "nul-in-directory",
        '[[listener]]\nbind = "127.0.0.1:0"\nhandler = "file-receive"\ndirectory = "/a\\u0000b"\n',
        78,
    ),
    ("nul-in-allow", LISTENER + 'allow = ["127.0.0.1\\u0000"]\n', 78),
    ("huge-integer", LISTENER + f"backlog = {TOML_BIG}\n", 78),
    (
        "huge-size",
        f'[[listener]]\nbind = "127.0.0.1:0"\nhandler = "recorder"\nmax_bytes = "{TOML_BIG}"\n',
        78,
    ),
    ("huge-uid", f'[daemon]\nuser = "{TOML_BIG}"\n' + LISTENER, 78),
    ("uid-minus-one", '[daemon]\nuser = "nobody"\ngroup = "4294967295"\n' + LISTENER, 78),
    ("infinite-timeout", LISTENER + "idle_timeout_s = inf\n", 78),
    ("nan-timeout", LISTENER + "idle_timeout_s = nan\n", 78),
    ("not-utf8", b"\xff\xfe[[listener]]\n", 78),
    ("listener-not-a-table", "listener = 5\n", 78),
    ("daemon-not-a-table", "daemon = 5\n" + LISTENER, 78),
    ("empty", "", 78),
]


def run(argv: list[bytes], stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [os.fsencode(part) for part in PORTD] + argv,
        stdout=stdout, stderr=subprocess.PIPE, timeout=30, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def assert_one_line(result: subprocess.CompletedProcess[bytes], code: int) -> None:
    stderr = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert result.returncode == code, stderr
    if lines and lines[0].startswith("usage: "):
        lines = lines[1:]  # argparse leads with the subcommand's usage line
    assert len(lines) == 1, stderr
    assert lines[0].startswith("portd"), stderr


@pytest.mark.parametrize(("argv", "code"), [c[1:] for c in COMMANDS], ids=[c[0] for c in COMMANDS])
def test_every_command_answers_hostile_arguments_with_one_line(
    argv: list[bytes], code: int
) -> None:
    assert_one_line(run(argv), code)


@pytest.mark.parametrize(("text", "code"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_the_config_loader_answers_hostile_configs_with_one_line(
    tmp_path: Path, text: str | bytes, code: int
) -> None:
    path = tmp_path / "portd.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    for command in ([b"check"], [b"serve", b"-c"], [b"units"]):
        assert_one_line(run([*command, bytes(path)]), code)


def test_a_closed_stdout_pipe_ends_quietly_with_0() -> None:
    """`portd services http | head -0` printed nothing useful and exited 70 (or 1)."""
    for argv in ([b"services", b"http"], [b"services", b"80"], [b"ports", b"--json"]):
        reader, writer = os.pipe()
        os.close(reader)  # the reader is gone before portd writes: EPIPE
        try:
            result = run(argv, stdout=writer)
        finally:
            os.close(writer)
        assert (result.returncode, result.stderr) == (0, b""), result.stderr


def test_a_scan_at_the_descriptor_limit_completes() -> None:
    """At RLIMIT_NOFILE the scan raised EMFILE with a traceback; it now goes on with the
    descriptors it has."""
    prlimit = require_tool("prlimit")
    result = subprocess.run(
        [prlimit, "--nofile=6", *PORTD, "scan", "127.0.0.1", "1-300", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert '"scanned": 300' in result.stdout
    assert "Traceback" not in result.stderr
