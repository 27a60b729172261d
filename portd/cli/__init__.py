"""The ``portd`` command: the parser, and the one place that turns errors into messages
and exit codes.

Each group of commands declares its own arguments and the small function that runs
each: the daemon's in ``portd.cli.daemon``, the netcat commands' in
``portd.shell.arguments``, the inspect commands' in ``portd.inspect.arguments``. The
modules that do the work are imported inside those functions, so each command loads
only what it uses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from portd import __version__
from portd.cli.cert import add_cert_command
from portd.cli.daemon import DAEMON_EXIT_CODES, RAW, add_daemon_commands
from portd.errors import EX_USAGE, PortdError, UsageError
from portd.inspect.arguments import add_inspect_commands
from portd.shell.arguments import add_shell_commands

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse with sysexits: bad arguments exit 64 with the usage line and one error line.

    A subcommand's parser also reads netcat-style bundles (``-lvnp 5555``) and names an
    unknown option by itself (portd.shell.ncargs).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(usage_parser=self)  # the innermost parser wins: a subcommand's

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        command = self.prog.partition(" ")[2]
        if command and args is not None:
            from portd.shell.ncargs import expand_short_flags

            takes_value = {
                option: action.nargs != 0
                for action in self._actions
                for option in action.option_strings
            }
            try:
                args = expand_short_flags(args, takes_value, command)
            except UsageError as exc:
                self.error(str(exc))
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also renders --help and the man page)."""
    parser = _Parser(
        prog="portd",
        description="Listen on ports: daemon, netcat, test servers.",
        epilog="examples:\n  portd serve -c portd.toml\n  portd listen 5555 > file.out\n"
        "  portd COMMAND --help\n\n" + DAEMON_EXIT_CODES,
        formatter_class=RAW,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"portd {__version__}")
    # Subcommands report their own usage line on a bad argument (and exit 64 too).
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    add_daemon_commands(commands)
    add_shell_commands(commands)
    add_inspect_commands(commands)
    add_cert_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, and map expected failures to one line and an exit code."""
    parser = build_parser()
    args, extras = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if extras:  # more words than the command takes; options were checked while parsing
        args.usage_parser.error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        code: int = args.run(args)
    except PortdError as exc:
        for line in exc.messages():
            print(f"portd: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `portd services | head -0`: the reader has what it wanted
        _quiet_stdout()
        return 0
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
    return code


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush at exit finds no
    closed pipe to complain about (Python's documented remedy for SIGPIPE)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
