"""The ``portd`` command as a real process: check, usage errors, --version, exit codes.

``portd check`` never binds, so the configs here name ports without opening them; the
one test that holds a port binds port 0 and reads the number back.
"""

from __future__ import annotations

import socket
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest

import portd
from portd.errors import EX_CONFIG, EX_USAGE
from tests.support import run_portd, write_config

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"
EXAMPLE_PORT = 7007  # the port config.example.toml uses; check never binds it
QUICK_S = 10.0  # a config error must end the process well before this


def write(tmp_path: Path, text: str) -> Path:
    """Write dedented TOML to a config file in tmp_path."""
    return write_config(tmp_path, textwrap.dedent(text))


def rows(stdout: str) -> list[list[str]]:
    """The listener rows of ``portd check`` output, split into columns."""
    return [line.split() for line in stdout.splitlines()[1:]]


def test_check_example_config_lists_every_listener() -> None:
    """check on config.example.toml exits 0: name, protocol, handler and socket per listener."""
    result = run_portd("check", str(EXAMPLE))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[0] == f"{EXAMPLE}: OK, 3 listeners"
    port = EXAMPLE_PORT
    assert rows(result.stdout) == [
        ["echo", "tcp", "echo", f"127.0.0.1:{port}"],
        ["echo-udp", "udp", "echo", f"127.0.0.1:{port}"],
        ["echo-v6", "tcp", "echo", f"[::1]:{port}"],
    ]


def test_check_shows_every_socket_a_bind_opens(tmp_path: Path) -> None:
    """A wildcard shows its IPv4 and IPv6 sockets; service names show as numbers."""
    path = write(
        tmp_path,
        """
        [[listener]]
        name = "any"
        bind = "http"
        handler = "echo"

        [[listener]]
        bind = "[::1]:echo"
        protocol = "udp"
        handler = "echo"
        """,
    )
    result = run_portd("check", str(path))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[0] == f"{path}: OK, 2 listeners"
    assert rows(result.stdout) == [
        ["any", "tcp", "echo", "0.0.0.0:80,", "[::]:80"],
        ["echo-udp-__1-7", "udp", "echo", "[::1]:7"],
    ]


def test_check_says_listener_in_the_singular_for_one(tmp_path: Path) -> None:
    """One listener reads '1 listener', not '1 listeners'."""
    path = write(tmp_path, '[[listener]]\nbind = "127.0.0.1:0"\nhandler = "echo"\n')
    result = run_portd("check", str(path))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[0] == f"{path}: OK, 1 listener"
    assert rows(result.stdout) == [["echo-tcp-127.0.0.1-0", "tcp", "echo", "127.0.0.1:0"]]


def test_check_does_not_bind(tmp_path: Path) -> None:
    """check passes on a config whose port is held by another socket: it never binds."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        path = write(tmp_path, f'[[listener]]\nbind = "127.0.0.1:{port}"\nhandler = "echo"\n')
        result = run_portd("check", str(path))
    assert result.returncode == 0
    # A port the kernel chose lies in the ephemeral range: check may warn about that.
    assert [line for line in result.stderr.splitlines()
            if not line.startswith("portd: warning: listener ")] == []  # fmt: skip
    assert rows(result.stdout) == [
        [f"echo-tcp-127.0.0.1-{port}", "tcp", "echo", f"127.0.0.1:{port}"]
    ]


def test_check_bad_config_exits_78_with_one_line_per_problem(tmp_path: Path) -> None:
    """Every problem is one 'portd: FILE: ...' line on stderr; nothing on stdout; exit 78."""
    path = write(
        tmp_path,
        """
        [daemon]
        loop = "trio"

        [[listener]]
        name = "one"
        bind = "[::1:80"
        handler = "echo"

        [[listener]]
        name = "two"
        bind = "127.0.0.1:80"
        handler = "echo"
        backlog = true
        """,
    )
    result = run_portd("check", str(path))
    assert result.returncode == EX_CONFIG
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"portd: {path}: [daemon]: loop = \"trio\": expected one of 'auto', 'uvloop', 'asyncio'",
        f'portd: {path}: [[listener]] #1 "one": bind = "[::1:80": '
        "bad bind '[::1:80'; expected [IPv6]:PORT",
        f'portd: {path}: [[listener]] #2 "two": backlog = true: '
        "expected an integer from 1 to 65535",
    ]


@pytest.mark.parametrize(
    ("bind", "message"),
    [
        pytest.param(
            "127.0.0.1:\N{SUPERSCRIPT TWO}",
            "bad port '\N{SUPERSCRIPT TWO}'; expected 0-65535 or a service name",
            id="unicode-digit",
        ),
        pytest.param("9" * 5000, "is out of range; expected 0-65535", id="huge-port"),
        pytest.param(
            "nonexistent.invalid:80", "cannot resolve host 'nonexistent.invalid': ", id="no-host"
        ),
    ],
)
def test_check_odd_bind_is_a_config_error_not_a_crash(
    tmp_path: Path, bind: str, message: str
) -> None:
    """Binds that once raised ValueError, and unresolvable hosts, exit 78 with one line."""
    path = write(tmp_path, f'[[listener]]\nbind = "{bind}"\nhandler = "echo"\n')
    result = run_portd("check", str(path))
    assert result.returncode == EX_CONFIG
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"portd: {path}: [[listener]] #1: bind = ")
    assert message in line


def test_check_missing_file_exits_78(tmp_path: Path) -> None:
    """A config path that does not exist: exit 78 and one line naming it."""
    path = tmp_path / "missing.toml"
    result = run_portd("check", str(path))
    assert result.returncode == EX_CONFIG
    assert result.stdout == ""
    assert result.stderr == f"portd: {path}: cannot read config: No such file or directory\n"


def test_check_toml_syntax_error_exits_78(tmp_path: Path) -> None:
    """A file that is not TOML: exit 78 and the parser's position, no traceback."""
    path = write(tmp_path, "[[listener]\n")
    result = run_portd("check", str(path))
    assert result.returncode == EX_CONFIG
    assert result.stderr.startswith(f"portd: {path}: TOML syntax error: ")
    assert "(at line 1, column " in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "usage", "error"),
    [
        pytest.param(
            (),
            "usage: portd ",
            "portd: error: the following arguments are required: COMMAND",
            id="none",
        ),
        pytest.param(
            ("bogus",),
            "usage: portd ",
            "portd: error: argument COMMAND: invalid choice: 'bogus'",
            id="unknown-subcommand",
        ),
        pytest.param(
            ("check",),
            "usage: portd check ",
            "portd check: error: the following arguments are required: FILE",
            id="check-without-file",
        ),
        pytest.param(
            ("check", "--bogus", "x.toml"),
            "usage: portd check ",
            "portd check: error: unknown option --bogus",
            id="unknown-option",
        ),
        pytest.param(
            ("serve", "--log-level", "loud"),
            "usage: portd serve ",
            "portd serve: error: argument --log-level: invalid choice: 'loud'",
            id="bad-choice",
        ),
    ],
)
def test_bad_arguments_exit_64_with_usage(args: tuple[str, ...], usage: str, error: str) -> None:
    """Arguments that do not parse: exit 64, a usage line, then one error line, on stderr."""
    result = run_portd(*args)
    assert result.returncode == EX_USAGE
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith(usage)
    assert lines[-1].startswith(error)
    assert "Traceback" not in result.stderr


def test_version_prints_the_package_version() -> None:
    """--version prints 'portd VERSION' on stdout, the same version as the package metadata."""
    result = run_portd("--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"portd {portd.__version__}\n",
        "",
    )
    assert portd.__version__ == version("portd")


def test_serve_missing_config_exits_78_quickly() -> None:
    """serve with a missing config exits 78 with one line, before logging or binding anything."""
    result = run_portd("serve", "-c", "missing.toml", timeout=QUICK_S)
    assert result.returncode == EX_CONFIG
    assert result.stdout == ""
    assert result.stderr == "portd: missing.toml: cannot read config: No such file or directory\n"


def test_serve_bad_config_binds_none_of_its_listeners(tmp_path: Path) -> None:
    """A config with one good and one bad listener fails whole: exit 78, no listener started."""
    path = write(
        tmp_path,
        """
        [[listener]]
        name = "good"
        bind = "127.0.0.1:0"
        handler = "echo"

        [[listener]]
        name = "bad"
        bind = "127.0.0.1:0"
        handler = "ecoh"
        """,
    )
    result = run_portd("serve", "--log-format", "json", "-c", str(path), timeout=QUICK_S)
    assert result.returncode == EX_CONFIG
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f'portd: {path}: [[listener]] #2 "bad": handler = "ecoh": ')
    assert "listener_started" not in result.stderr


def test_check_resolves_the_user_as_serve_does(tmp_path: Path) -> None:
    """An unknown [daemon] user fails check with serve's line and exit code (67)."""
    path = write(
        tmp_path,
        """
        [daemon]
        user = "no-such-user-portd"

        [[listener]]
        bind = "127.0.0.1:0"
        handler = "echo"
        """,
    )
    checked = run_portd("check", str(path))
    served = run_portd("serve", "-c", str(path), timeout=QUICK_S)
    line = "portd: unknown user 'no-such-user-portd' (use a name from passwd or a uid)\n"
    assert (checked.returncode, checked.stdout, checked.stderr) == (67, "", line)
    assert (served.returncode, served.stderr) == (67, line)


def test_check_resolves_the_loop_as_serve_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """loop = "uvloop" on a host without uvloop: a config error (78), for check and serve."""
    import sys

    from portd.cli.daemon import resolve_daemon
    from portd.config import parse_config_text
    from portd.errors import LoopUnavailableError

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now fails
    config = parse_config_text(
        '[daemon]\nloop = "uvloop"\n[[listener]]\nbind = "127.0.0.1:0"\nhandler = "echo"\n', "x"
    )
    with pytest.raises(LoopUnavailableError) as raised:
        resolve_daemon(config)
    assert raised.value.exit_code == EX_CONFIG
    assert str(raised.value).startswith('[daemon] loop = "uvloop" but uvloop is not installed')


def test_check_reads_a_config_from_stdin() -> None:
    shown = run_portd("check", "-", input=EXAMPLE.read_text())
    assert (shown.returncode, shown.stderr) == (0, "")
    assert shown.stdout.splitlines()[0] == "<stdin>: OK, 3 listeners"
    bad = run_portd("check", "-", input="[[listener]]\n")
    assert bad.returncode == EX_CONFIG
    assert bad.stderr.splitlines() == [
        "portd: <stdin>: [[listener]] #1: missing required key 'bind'",
        "portd: <stdin>: [[listener]] #1: missing required key 'handler'",
    ]
