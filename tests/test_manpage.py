"""portd(1) and --help: the shipped man page is the one the parser renders now, it renders
with man without a warning, and every command's --help ends with examples and exit codes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from portd.cli import build_parser
from portd.manpage import commands, render
from tests.support import require_tool, run_portd

ROOT = Path(__file__).resolve().parent.parent
MAN_PAGE = ROOT / "man" / "portd.1"
COMMANDS = sorted(name for name, _summary, _parser in commands(build_parser()))


def test_the_shipped_man_page_is_current() -> None:
    """Regenerate with: python -m portd.manpage > man/portd.1"""
    assert MAN_PAGE.read_text(encoding="utf-8") == render()


def test_man_renders_it_without_a_warning() -> None:
    man = require_tool("man")
    shown = subprocess.run(
        [man, "-l", "--warnings", str(MAN_PAGE)], capture_output=True, text=True, check=False,
        timeout=60, env={**os.environ, "MANWIDTH": "100", "MAN_KEEP_FORMATTING": "0"},
    )  # fmt: skip
    assert (shown.returncode, shown.stderr) == (0, "")
    text = shown.stdout
    assert text.startswith("PORTD(1)")
    for command in COMMANDS:
        assert f"portd {command}" in text
    assert "RestartPreventExitStatus" not in text  # nothing leaked from elsewhere
    assert "-lvnp 5555" in text


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_examples_and_exit_codes(command: str) -> None:
    shown = run_portd(command, "--help", env={**os.environ, "COLUMNS": "100"})
    assert (shown.returncode, shown.stderr) == (0, "")
    assert "example" in shown.stdout
    assert "exit status" in shown.stdout


def test_groff_finds_nothing_to_warn_about() -> None:
    groff = shutil.which("groff") or require_tool("groff")
    checked = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-z", str(MAN_PAGE)], capture_output=True, text=True,
        check=False, timeout=60,
    )  # fmt: skip
    assert (checked.returncode, checked.stderr) == (0, "")
