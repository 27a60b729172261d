"""exec's config, checked at load: one line per problem, exit 78, the same from
``portd check`` as from ``portd serve`` (see tests/test_check_agrees_with_serve.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from portd.errors import ConfigError
from portd.testing import serve
from tests.support import PORTD, run_portd

LISTENER = '[[listener]]\nname = "run"\nbind = "127.0.0.1:0"\nhandler = "exec"\n'


def check(tmp_path: Path, text: str) -> tuple[int, list[str]]:
    config = tmp_path / "portd.toml"
    config.write_text(text)
    done = run_portd("check", str(config))
    return done.returncode, done.stderr.splitlines()


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ('command = "wc -c"', 'command = \'wc -c\': a string runs under /bin/sh -c only with '
         'shell = true; without a shell give an argv list, such as ["wc", "-c"]'),
        ('command = ["wc"]\nshell = true', "shell = true takes command as one string"),
        ("command = []", 'command = [...]: expected an argv list such as ["/usr/bin/wc", "-c"]'),
        ('command = ["no-such-program-here"]', "command: 'no-such-program-here' is not an "
         "executable file in PATH (/usr/local/bin:/usr/bin:/bin)"),
        ('command = ["/etc/passwd"]', "command: '/etc/passwd' is not an executable file"),
        ('command = ["cat"]\ncwd = "/no/such/dir"', "cwd = '/no/such/dir': not a directory"),
        ('command = ["cat"]\ncwd = "relative"', 'cwd = "relative": expected an absolute'),
        ('command = ["cat"]\nenv = { "1X" = "y" }', "'1X' is not a variable name"),
        ('command = ["cat"]\nenv = { X = 1 }', "X: expected a string without NUL"),
        ('command = ["cat"]\nuser = "no-such-user-here"', "user = 'no-such-user-here': no such"),
        ('command = ["cat"]\ngroup = "no-such-group-here"', "group = 'no-such-group-here'"),
        ('command = ["cat"]\nstderr = "file"', "expected one of 'log', 'null', 'connection'"),
        ('command = ["cat"]\ntimeout_s = -1', "timeout_s = -1: expected a number from 0"),
        ("", "missing required key 'command'"),
    ],
    ids=["string-without-shell", "list-with-shell", "empty", "not-found", "not-executable",
         "no-cwd", "relative-cwd", "env-name", "env-value", "user", "group", "stderr",
         "timeout", "no-command"],
)  # fmt: skip
def test_a_bad_setting_is_one_line_and_exit_78(tmp_path: Path, settings: str, says: str) -> None:
    code, lines = check(tmp_path, LISTENER + settings + "\n")
    assert code == 78
    assert len(lines) == 1, lines
    assert lines[0].startswith(f'portd: {tmp_path}/portd.toml: [[listener]] #1 "run": ')
    assert says in lines[0]
    assert "Traceback" not in lines[0]


def test_every_problem_of_a_listener_is_said_at_once(tmp_path: Path) -> None:
    code, lines = check(tmp_path, LISTENER + 'command = ["cat"]\ncwd = "/no/dir"\nuser = "no-u"\n')
    assert code == 78
    assert len(lines) == 2


def test_serve_raises_the_same_problems() -> None:
    with pytest.raises(ConfigError, match="a string runs under /bin/sh -c only with shell"):
        serve("exec", command="wc -c").__enter__()


def test_a_user_switch_without_root_is_refused(public_dir: Path) -> None:
    """Checked as the user portd runs as: nobody cannot start programs as root."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run portd check as another user")
    config = public_dir / "portd.toml"
    config.write_text(LISTENER + 'command = ["cat"]\nuser = "root"\n')
    config.chmod(0o644)
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *PORTD, "check",
         str(config)], capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 78, done.stderr
    assert "running the program as another user needs portd to run as root" in done.stderr


def test_daemon_user_and_a_program_user_cannot_go_together(tmp_path: Path) -> None:
    code, lines = check(
        tmp_path, '[daemon]\nuser = "nobody"\n' + LISTENER + 'command = ["cat"]\nuser = "nobody"\n'
    )
    assert code == 78
    assert lines == [
        f"portd: {tmp_path}/portd.toml: [[listener]] #1 \"run\": user/group 'nobody' runs the "
        "program as another user, which needs root; [daemon] user = 'nobody' drops root "
        "after binding (leave [daemon] user unset)"
    ]


def test_check_lists_the_exec_listener(tmp_path: Path) -> None:
    code, _ = check(tmp_path, LISTENER + 'command = ["cat"]\n')
    assert code == 0
