"""The ``portd`` command: argument parsing, one small function per subcommand, exit codes.

This is the only place that turns errors into messages and exit codes. Subcommand
modules are imported inside their functions so each command loads only what it uses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from portd import __version__
from portd.errors import EX_SOFTWARE, EX_USAGE, ConfigError, PortdError

DEFAULT_CONFIG = "/etc/portd/portd.toml"


class _Parser(argparse.ArgumentParser):
    """argparse with sysexits: bad arguments exit 64 with the usage line and one error line."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to render --help)."""
    parser = _Parser(prog="portd", description="Listen on ports: daemon, netcat, test servers.")
    parser.add_argument("--version", action="version", version=f"portd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the daemon from a config file")
    serve.add_argument(
        "-c",
        "--config",
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"TOML config (default: {DEFAULT_CONFIG})",
    )
    serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="override [daemon] log_level",
    )
    serve.add_argument(
        "--log-format", choices=("auto", "console", "json"), help="override [daemon] log_format"
    )
    serve.set_defaults(run=run_serve)

    check = commands.add_parser("check", help="validate a config file without binding")
    check.add_argument("config", metavar="FILE")
    check.set_defaults(run=run_check)
    return parser


def run_serve(args: argparse.Namespace) -> int:
    """``portd serve``: bind every listener, serve, drain on SIGTERM."""
    from dataclasses import replace

    from portd.config import load_config
    from portd.logging import configure_logging
    from portd.supervisor import run_daemon

    config = load_config(args.config)
    daemon = config.daemon
    daemon = replace(
        daemon,
        log_level=args.log_level or daemon.log_level,
        log_format=args.log_format or daemon.log_format,
    )
    configure_logging(daemon.log_format, daemon.log_level)
    return run_daemon(replace(config, daemon=daemon))


def run_check(args: argparse.Namespace) -> int:
    """``portd check``: validate and print the sockets each listener would open."""
    from portd.config import load_config

    config = load_config(args.config)
    count = len(config.listeners)
    print(f"{config.source}: OK, {count} listener{'s' if count != 1 else ''}")
    width = max(len(listener.name) for listener in config.listeners)
    for listener in config.listeners:
        sockets = ", ".join(str(address) for address in listener.addresses)
        handler = listener.handler.name
        print(f"  {listener.name:<{width}}  {listener.protocol}  {handler:<10}  {sockets}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, and map expected failures to one line and an exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"portd: {line}", file=sys.stderr)
        return exc.exit_code
    except PortdError as exc:
        print(f"portd: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EX_SOFTWARE
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
