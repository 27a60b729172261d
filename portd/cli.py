"""The ``portd`` command: argument parsing, one small function per subcommand, exit codes.

This is the only place that turns errors into messages and exit codes. Subcommand
modules are imported inside their functions so each command loads only what it uses.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from portd import __version__
from portd.errors import EX_USAGE, PortdError, UsageError

if TYPE_CHECKING:
    from portd.endpoints.base import ProtocolName

DEFAULT_CONFIG = "/etc/portd/portd.toml"


class _Parser(argparse.ArgumentParser):
    """argparse with sysexits: bad arguments exit 64 with the usage line and one error line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(usage_parser=self)  # the innermost parser wins: a subcommand's

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


MAX_SECONDS = 31_536_000.0  # a year: longer waits overflow the kernel's timeouts (time_t)


def _positive(text: str) -> float:
    value = _seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _seconds(text: str) -> float:
    """-q SECS: a number; negative means wait for the peer (Debian nc)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not abs(value) <= MAX_SECONDS:  # also refuses inf and nan
        raise argparse.ArgumentTypeError(
            f"expected at most {MAX_SECONDS:.0f} seconds (a year), got {text!r}"
        )
    return value


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _add_family_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-4", dest="ipv4", action="store_true", help="IPv4 only")
    parser.add_argument("-6", dest="ipv6", action="store_true", help="IPv6 only")


def _add_eof_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--close-on-eof",
        action="store_true",
        help="close the connection when stdin ends (default: half-close, keep reading)",
    )
    parser.add_argument(
        "-d",
        "--no-stdin",
        action="store_true",
        help="do not read stdin (nc -d): the peer's end ends the session",
    )
    parser.add_argument(
        "-q",
        dest="quit_after",
        type=_seconds,
        metavar="SECS",
        help="after stdin ends, quit SECS later (negative: wait for the peer)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="report peers, and byte counts with sha256 at the end, on stderr",
    )


def _add_shell_commands(commands: Any) -> None:
    listen = commands.add_parser(
        "listen",
        usage="%(prog)s [options] [HOST:]PORT",
        help="nc -l: accept a connection, relay stdin/stdout",
        description="Listen like nc -l; stdout carries only data.",
    )
    listen.add_argument("bind", metavar="[HOST:]PORT")
    listen.add_argument(
        "-u", "--udp", action="store_true", help="UDP (replies go to the last peer)"
    )
    listen.add_argument(
        "-k", "--keep", action="store_true", help="keep listening and serve clients concurrently"
    )
    listen.add_argument(
        "--max-clients",
        type=_count,
        default=128,
        metavar="N",
        help="with -k: serve at most N clients at once, refuse (RST) the next (default 128)",
    )
    _add_family_flags(listen)
    _add_eof_flags(listen)
    listen.add_argument("--port-file", metavar="FILE", help="write the bound port to FILE")
    handler = listen.add_mutually_exclusive_group()
    handler.add_argument("--handler", metavar="NAME", help="serve with a handler instead of stdio")
    handler.add_argument(
        "--echo", dest="handler", action="store_const", const="echo", help="same as --handler echo"
    )
    handler.add_argument(
        "--http",
        dest="handler",
        action="store_const",
        const="http-hello",
        help="same as --handler http-hello",
    )
    listen.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a handler option (repeatable)",
    )
    listen.set_defaults(run=run_listen)

    connect = commands.add_parser(
        "connect",
        usage="%(prog)s [options] HOST PORT",
        help="nc HOST PORT: connect, relay stdin/stdout",
        epilog="exit codes: 0 the session ended cleanly, 1 refused, timed out, no route, "
        "unresolvable or reset (the line names each address tried), 64 bad arguments, "
        "130 Ctrl-C",
    )
    connect.add_argument("host")
    connect.add_argument("port")
    connect.add_argument("-u", "--udp", action="store_true", help="UDP")
    connect.add_argument(
        "-w",
        dest="wait",
        type=_positive,
        metavar="SECS",
        default=10.0,
        help="connect timeout (default 10)",
    )
    _add_family_flags(connect)
    _add_eof_flags(connect)
    connect.set_defaults(run=run_connect)

    wait = commands.add_parser(
        "wait",
        usage="%(prog)s [options] HOST:PORT ...",
        help="wait until every HOST:PORT accepts TCP connections",
        epilog="exit codes: 0 all up, 1 --timeout passed (one line per target still down, "
        "naming each address and how it failed), 64 bad arguments, 130 Ctrl-C",
    )
    wait.add_argument("targets", nargs="+", metavar="HOST:PORT")
    wait.add_argument(
        "--timeout",
        type=_positive,
        default=30.0,
        metavar="SECS",
        help="give up after SECS (default 30); exit 1",
    )
    wait.add_argument(
        "--interval",
        type=_positive,
        default=0.25,
        metavar="SECS",
        help="pause between attempts (default 0.25)",
    )
    wait.add_argument("-v", "--verbose", action="store_true", help="say when each comes up")
    wait.set_defaults(run=run_wait)

    scan = commands.add_parser(
        "scan", usage="%(prog)s [options] HOST PORTS", help="TCP connect scan of a host's ports"
    )
    scan.add_argument("host")
    scan.add_argument("ports", metavar="PORTS", help="e.g. 22,80,8000-8100,http")
    scan.add_argument(
        "--timeout",
        type=_positive,
        default=1.0,
        metavar="SECS",
        help="per-port connect timeout (default 1)",
    )
    scan.add_argument(
        "--concurrency",
        type=_count,
        default=256,
        metavar="N",
        help="connects in flight at once (default 256)",
    )
    scan.add_argument("--json", action="store_true", help="machine-readable output")
    _add_family_flags(scan)
    scan.set_defaults(run=run_scan)

    _add_ports_command(commands)

    _add_doctor_command(commands)
    services = commands.add_parser("services", help="look up /etc/services: http -> 80/tcp")
    services.add_argument("query", metavar="NAME|PORT")
    services.set_defaults(run=run_services)


def _add_ports_command(commands: Any) -> None:
    ports = commands.add_parser(
        "ports",
        usage="%(prog)s [options]",
        help="every listening socket here, like ss -ltnup",
        description="Sockets of this host, like ss -ltnup (-a: ss -tuanp, -x: ss -lxp).",
        epilog="exit codes: 0 listed, 1 no such --pid, 64 bad arguments, "
        "69 the kernel's tables are unreadable, 77 --pid of another user's process",
    )
    ports.add_argument("--tcp", action="store_true", help="TCP only")
    ports.add_argument("--udp", action="store_true", help="UDP only")
    ports.add_argument("-x", "--unix", action="store_true", help="unix-domain sockets instead")
    ports.add_argument(
        "-a", "--all", action="store_true", help="every state: connections too (ss -a)"
    )
    ports.add_argument("--port", type=_port, metavar="N", help="only port N")
    ports.add_argument("--pid", type=_count, metavar="N", help="only sockets process N holds")
    ports.add_argument("--json", action="store_true", help="machine-readable output")
    ports.set_defaults(run=run_ports)


def _add_doctor_command(commands: Any) -> None:
    doctor = commands.add_parser(
        "doctor",
        usage="%(prog)s [options] [HOST:]PORT",
        help="why can't I reach my port? listeners, addresses, firewall, kernel",
        description="Diagnose why a port cannot be reached: who listens, which of this "
        "host's addresses accept a connection, firewall rules (nft or iptables-save), "
        "kernel settings, /etc/services. HOST defaults to every local address.",
        epilog="exit codes: 0 nothing blocks connections, 1 a finding blocks them (or HOST "
        "does not resolve), 64 bad arguments, 69 the diagnosis could not run. Without root "
        "the firewall and other users' processes are reported as not checked.",
    )
    doctor.add_argument("target", metavar="[HOST:]PORT")
    doctor.add_argument("-u", "--udp", action="store_true", help="a UDP port")
    doctor.add_argument(
        "-w",
        dest="timeout",
        type=_positive,
        default=1.0,
        metavar="SECS",
        help="connect-test timeout per address (default 1)",
    )
    doctor.add_argument("--json", action="store_true", help="the findings as JSON")
    doctor.set_defaults(run=run_doctor)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to render --help)."""
    parser = _Parser(
        prog="portd",
        description="Listen on ports: daemon, netcat, test servers.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"portd {__version__}")
    # Subcommands report their own usage line on a bad argument (and exit 64 too).
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    serve = commands.add_parser(
        "serve", usage="%(prog)s [options]", help="run the daemon from a config file"
    )
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
    serve.add_argument(
        "--activation-only",
        action="store_true",
        help="serve only sockets passed by systemd; exit 78 naming listeners without",
    )
    serve.set_defaults(run=run_serve)

    status = commands.add_parser(
        "status",
        usage="%(prog)s [options]",
        help="ask the running daemon for its listeners' numbers",
    )
    where = status.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="the control socket")
    where.add_argument("-c", "--config", metavar="FILE", help="take the socket path from FILE")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=run_status)

    units = commands.add_parser(
        "units",
        usage="%(prog)s [options] FILE",
        help="print systemd socket and service units for a config",
    )
    units.add_argument("config", metavar="FILE")
    units.add_argument(
        "--portd",
        default="/usr/local/bin/portd",
        metavar="PATH",
        help="the portd executable the service runs (default: /usr/local/bin/portd)",
    )
    units.add_argument("--output-dir", metavar="DIR", help="write the unit files there")
    units.set_defaults(run=run_units)

    check = commands.add_parser(
        "check",
        help="validate a config file without binding",
        description="Validate a config without binding; warn (stderr) about kernel settings "
        "that will hurt a listener: a port in the ephemeral range, a backlog above somaxconn.",
        epilog="exit codes: 0 valid (warnings or not), 78 config error",
    )
    check.add_argument("config", metavar="FILE")
    check.set_defaults(run=run_check)
    _add_shell_commands(commands)
    return parser


def run_serve(args: argparse.Namespace) -> int:
    """``portd serve``: bind every listener, serve, drain on SIGTERM."""
    from portd.daemon import hold_early_reloads

    hold_early_reloads()  # before anything slow: a SIGHUP from here on is a reload, not death
    from dataclasses import replace

    from portd.config import load_config
    from portd.daemon import run_daemon
    from portd.logging import configure_logging
    from portd.privileges import resolve_identity
    from portd.systemd import take_inherited_sockets

    config = load_config(args.config)
    overrides = {
        key: value
        for key, value in (("log_level", args.log_level), ("log_format", args.log_format))
        if value is not None
    }
    daemon = replace(config.daemon, **overrides)
    configure_logging(daemon.log_format, daemon.log_level)
    _log_listener_warnings(config)
    identity = resolve_identity(daemon.user, daemon.group) if daemon.user else None
    return run_daemon(
        replace(config, daemon=daemon),
        inherited=take_inherited_sockets(),
        activation_only=args.activation_only,
        identity=identity,
        overrides=overrides,
    )


def _log_listener_warnings(config: Any) -> None:
    """One warning line per kernel setting that will hurt a listener (ephemeral port,
    backlog above somaxconn); serving goes on."""
    from portd.inspect.kernel import listener_warnings
    from portd.logging import get_logger

    for warning in listener_warnings(config):
        get_logger(listener=warning.listener).warning(warning.event, message=warning.text)


def run_status(args: argparse.Namespace) -> int:
    """``portd status``: the daemon's listeners through its control socket."""
    import json

    from portd.control import DEFAULT_SOCKET, query, resolve_socket_path

    path = args.socket or DEFAULT_SOCKET
    if args.config:
        from portd.config import load_config

        setting = load_config(args.config).daemon.control_socket
        path = resolve_socket_path(setting) or (DEFAULT_SOCKET if setting == "auto" else "")
        if not path:
            raise UsageError(f'{args.config} turns the control socket off (control_socket = "")')
    reply = query(path)
    if args.json:
        print(json.dumps(reply))
        return 0
    from portd.shell.stats import human_bytes

    uptime = f"{reply['uptime_s']:.0f} s"
    print(f"portd {reply['version']}, pid {reply['pid']}, up {uptime}, {reply['config']}")
    header = ("NAME", "PROTO", "ADDRESS", "HANDLER", "ACTIVE", "TOTAL", "IN", "OUT", "REFUSED")
    rows = [header]
    for listener in reply["listeners"]:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(listener["refusals"].items())) or "-"
        counts = (str(listener["active"]), str(listener["total"]))
        traffic = (human_bytes(listener["bytes_in"]), human_bytes(listener["bytes_out"]))
        where = ", ".join(listener["addresses"])
        rows.append((listener["name"], listener["protocol"], where, listener["handler"],
                     *counts, *traffic, refused))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def run_units(args: argparse.Namespace) -> int:
    """``portd units``: systemd units that socket-activate the config's listeners."""
    from pathlib import Path

    from portd.config import load_config
    from portd.units import port_zero_warnings, render_units

    config = load_config(args.config)
    units = render_units(config, str(Path(args.config).resolve()), args.portd)
    for warning in port_zero_warnings(config):
        print(f"portd: warning: {warning}", file=sys.stderr)
    if args.output_dir:
        directory = Path(args.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in units.items():
            (directory / name).write_text(text, encoding="utf-8")
            print(directory / name)
        return 0
    for name, text in units.items():
        print(f"# {name}\n{text}")
    return 0


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
    from portd.inspect.kernel import listener_warnings

    for warning in listener_warnings(config):
        print(f"portd: warning: {warning}", file=sys.stderr)
    return 0


def run_listen(args: argparse.Namespace) -> int:
    """``portd listen``: stdio relay, or a handler with --handler/--echo/--http."""
    from portd.shell.listen import ListenOptions
    from portd.shell.listen import run_listen as listen

    options = ListenOptions(args)
    if args.handler:
        from portd.shell.adhoc import run_handler

        return run_handler(options, args.bind, args.handler, args.set)
    if args.set:
        raise UsageError("--set needs --handler (or --echo/--http)")
    return listen(options)


def run_connect(args: argparse.Namespace) -> int:
    """``portd connect``."""
    from portd.shell.connect import run_connect as connect

    return connect(args)


def run_wait(args: argparse.Namespace) -> int:
    """``portd wait``."""
    from portd.inspect.wait import run_wait as wait

    return wait(args.targets, args.timeout, args.interval, args.verbose)


def run_scan(args: argparse.Namespace) -> int:
    """``portd scan``."""
    from portd.inspect.scan import run_scan as scan
    from portd.shell.listen import address_families

    families = address_families(args.ipv4, args.ipv6)
    return scan(
        args.host, args.ports, timeout_s=args.timeout, concurrency=args.concurrency,
        as_json=args.json, families=families,
    )  # fmt: skip


def run_ports(args: argparse.Namespace) -> int:
    """``portd ports``."""
    from portd.inspect.ports import PortsQuery
    from portd.inspect.ports import run_ports as ports

    if args.unix and (args.tcp or args.udp or args.port is not None):
        raise UsageError("-x lists unix sockets: --tcp, --udp and --port do not apply")
    protocols: tuple[ProtocolName, ...] = ("tcp", "udp")
    if args.tcp != args.udp:
        protocols = ("tcp",) if args.tcp else ("udp",)
    return ports(PortsQuery(protocols, args.port, args.pid, args.all, args.unix, args.json))


def run_doctor(args: argparse.Namespace) -> int:
    """``portd doctor``."""
    from portd.inspect.doctor import run_doctor as doctor

    return doctor(args.target, "udp" if args.udp else "tcp", args.json, args.timeout)


def run_services(args: argparse.Namespace) -> int:
    """``portd services``."""
    from portd.inspect.services import lookup

    for name, port, protocol in lookup(args.query):
        print(f"{name} {port}/{protocol}")
    return 0


NEGATIVE_NUMBER = re.compile(r"-\d+(\.\d*)?")


def attach_negative_values(argv: Sequence[str]) -> list[str]:
    """``-q -1`` -> ``-q-1``: with -4/-6 defined, argparse reads ``-1`` as an option, yet
    ``-q -1`` is how Debian nc users write "wait for the peer"."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "-q" and NEGATIVE_NUMBER.fullmatch(arg):
            out[-1] = "-q" + arg
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, and map expected failures to one line and an exit code."""
    parser = build_parser()
    args, extras = parser.parse_known_args(
        attach_negative_values(sys.argv[1:] if argv is None else argv)
    )
    if extras:  # report with the subcommand's own usage line
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
