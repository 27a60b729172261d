"""The daemon's commands: serve, status, reload, check, example-config, units.

Imported by every ``portd`` start: argparse only; each command imports what it runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from portd.config import Config
    from portd.privileges import Identity

DEFAULT_CONFIG = "/etc/portd/portd.toml"
DAEMON_EXIT_CODES = """\
exit status:
  0    clean stop after a drain (check: no problem; reload: the new config serves)
  64   bad arguments           67  [daemon] user or group names nobody
  69   address in use or not available, no daemon on the control socket
  70   a worker process ended before it served (its own line says why)
  77   privileged port without CAP_NET_BIND_SERVICE, or [daemon] user without root
  78   config error (reload: the daemon keeps serving the old config)
  128+N  a second signal N cut the drain short"""
RAW = argparse.RawDescriptionHelpFormatter


def add_daemon_commands(commands: Any) -> None:
    """serve, status, reload, check, example-config and units."""
    _add_serve(commands)
    _add_control_commands(commands)
    _add_config_commands(commands)


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", usage="%(prog)s [options]", help="run the daemon from a config file",
        description="Bind every listener of the config (all or nothing), serve until "
        "SIGTERM/SIGINT, then drain. SIGHUP or portd reload reloads the file. With "
        "[daemon] workers (or --workers) above 1, worker processes serve the sockets the "
        "daemon bound, and a reload starts new ones; [daemon] metrics serves /metrics.",
        epilog="examples:\n  portd serve -c config.example.toml\n"
        "  portd serve -c portd.toml --log-format json 2>&1 | jq .\n"
        "  portd serve -c portd.toml --workers auto\n\n" + DAEMON_EXIT_CODES,
        formatter_class=RAW,
    )  # fmt: skip
    serve.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE",
                       help=f"TOML config (default: {DEFAULT_CONFIG})")  # fmt: skip
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error", "critical"),
                       help="override [daemon] log_level")  # fmt: skip
    serve.add_argument("--log-format", choices=("auto", "console", "json"),
                       help="override [daemon] log_format")  # fmt: skip
    serve.add_argument("--activation-only", action="store_true",
                       help="serve only sockets passed by systemd; exit 78 naming listeners "
                       "without")  # fmt: skip
    serve.add_argument("--workers", metavar="N", type=_workers,
                       help='override [daemon] workers: worker processes, or "auto" (one per '
                       "CPU this process may use); 1: one process")  # fmt: skip
    serve.set_defaults(run=run_serve)


def _workers(text: str) -> int | str:
    """``--workers``: what ``[daemon] workers`` takes."""
    from portd.config.daemon import WORKERS_RULE, parse_workers
    from portd.errors import OptionError

    try:
        return parse_workers(int(text) if text.isascii() and text.isdigit() else text)
    except OptionError:
        raise argparse.ArgumentTypeError(WORKERS_RULE) from None


def _add_where(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="the control socket (or @name)")
    where.add_argument("-c", "--config", metavar="FILE",
                       help="the daemon serving FILE (its control socket)")  # fmt: skip


def _add_control_commands(commands: Any) -> None:
    status = commands.add_parser(
        "status", usage="%(prog)s [-c FILE | --socket PATH] [--json]",
        help="ask the running daemon for its listeners' numbers", formatter_class=RAW,
        epilog="examples:\n  portd status -c portd.toml\n  portd status --json | jq .\n\n"
        "exit status: 0 answered, 69 no daemon answers, 64 bad arguments",
    )  # fmt: skip
    _add_where(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=run_status)
    reload = commands.add_parser(
        "reload", usage="%(prog)s [-c FILE | --socket PATH] [--timeout SECS]",
        help="reload the running daemon's config and wait for the outcome",
        description="Ask the running daemon to reload its config file (what SIGHUP does) "
        "and wait: exit 0 once the new config serves, or with the reason, one line per "
        "problem, while the old config keeps serving.",
        epilog="examples:\n  portd reload -c portd.toml\n"
        "  ExecReload=/usr/local/bin/portd reload -c /etc/portd/portd.toml\n\n"
        "exit status: 0 reloaded, 78 config error, 69 a listener could not bind or no "
        "daemon answers,\n  77 privileged port, 64 bad arguments",
        formatter_class=RAW,
    )  # fmt: skip
    _add_where(reload)
    reload.add_argument("--timeout", type=float, default=90.0, metavar="SECS",
                        help="give up waiting after SECS (default 90)")  # fmt: skip
    reload.set_defaults(run=run_reload)


def _add_config_commands(commands: Any) -> None:
    check = commands.add_parser(
        "check", usage="%(prog)s FILE", help="validate a config file without binding",
        description="Validate FILE (- for stdin) as serve would, user, group and event loop "
        "included, and print the sockets each listener would open; nothing is bound. Warn "
        "(stderr) about kernel settings that will hurt a listener: a port in the ephemeral "
        "range, a backlog above somaxconn.",
        epilog="examples:\n  portd check /etc/portd/portd.toml\n"
        "  portd example-config | portd check -\n\n"
        "exit status: 0 no problem, 78 config error, 67 unknown user or group, 64 bad arguments",
        formatter_class=RAW,
    )  # fmt: skip
    check.add_argument("config", metavar="FILE")
    check.set_defaults(run=run_check)
    example = commands.add_parser(
        "example-config", usage="%(prog)s", help="print the example config (every option)",
        epilog="example:\n  portd example-config > portd.toml && portd check portd.toml\n\n"
        "exit status: 0 printed",
        formatter_class=RAW,
    )  # fmt: skip
    example.set_defaults(run=run_example_config)
    units = commands.add_parser(
        "units", usage="%(prog)s [options] FILE",
        help="print systemd socket and service units for a config", formatter_class=RAW,
        epilog="example:\n  portd units /etc/portd/portd.toml --output-dir /etc/systemd/system\n\n"
        "exit status: 0 written, 78 config error, 64 bad arguments",
    )  # fmt: skip
    units.add_argument("config", metavar="FILE")
    units.add_argument("--portd", default="/usr/local/bin/portd", metavar="PATH",
                       help="the portd executable the service runs (default: "
                       "/usr/local/bin/portd)")  # fmt: skip
    units.add_argument("--output-dir", metavar="DIR", help="write the unit files there")
    units.set_defaults(run=run_units)


def resolve_daemon(config: Config) -> Identity | None:
    """What serve settles before binding, shared with check: [daemon] user/group and loop.

    Raises:
        UnknownUserError: a user or group that names nobody (67).
        LoopUnavailableError: ``loop = "uvloop"`` without uvloop (78).
    """
    from portd.daemon import loop_options
    from portd.privileges import resolve_identity

    loop_options(config.daemon.loop)
    daemon = config.daemon
    return resolve_identity(daemon.user, daemon.group) if daemon.user else None


def run_serve(args: argparse.Namespace) -> int:
    """``portd serve``: bind every listener, serve, drain on SIGTERM."""
    from portd.daemon import hold_early_reloads

    hold_early_reloads()  # before anything slow: a SIGHUP from here on is a reload, not death
    import gc

    # Start-up makes what lives as long as the daemon (config, listeners, handlers): the
    # collector's passes over that growing heap were a fifth of the time to READY with
    # 10,000 listeners. It runs again once serving (freeze_start_up_objects).
    gc.disable()
    from dataclasses import replace

    from portd.config import load_config
    from portd.daemon import run_daemon
    from portd.logging import configure_logging
    from portd.systemd import take_inherited_sockets

    config = load_config(args.config)
    settings = (("log_level", args.log_level), ("log_format", args.log_format),
                ("workers", args.workers))  # fmt: skip
    overrides = {key: value for key, value in settings if value is not None}
    daemon = replace(config.daemon, **overrides)
    configure_logging(daemon.log_format, daemon.log_level)
    _log_listener_warnings(config)
    identity = resolve_daemon(config)
    return run_daemon(
        replace(config, daemon=daemon),
        inherited=take_inherited_sockets(),
        activation_only=args.activation_only,
        identity=identity,
        overrides=overrides,
    )


def _log_listener_warnings(config: Config) -> None:
    """One warning line per kernel setting that will hurt a listener (ephemeral port,
    backlog above somaxconn); serving goes on."""
    from portd.inspect.kernel import listener_warnings
    from portd.logging import get_logger

    for warning in listener_warnings(config):
        get_logger(listener=warning.listener).warning(warning.event, message=warning.text)


def run_status(args: argparse.Namespace) -> int:
    """``portd status``: the daemon's listeners through its control socket."""
    import json

    from portd.control import client_socket_paths, query

    reply = query(client_socket_paths(args.socket, args.config))
    if args.json:
        print(json.dumps(reply))
        return 0
    from portd.shell.stats import human_bytes

    uptime = f"{reply['uptime_s']:.0f} s"
    print(f"portd {reply['version']}, pid {reply['pid']}, up {uptime}, {reply['config']}")
    if "workers" in reply:
        pids = ", ".join(f"{w['pid']} ({w['state']})" for w in reply["workers"])
        restarts = reply.get("worker_restarts", 0)
        print(f"workers: {pids}; {restarts} restart{'s' if restarts != 1 else ''}")
    header = ("NAME", "PROTO", "ADDRESS", "HANDLER", "ACTIVE", "TOTAL", "IN", "OUT", "REFUSED")
    rows = [header]
    for listener in reply["listeners"]:
        refusals = dict(listener["refusals"])
        if handshakes := sum(listener.get("tls_handshake_failed", {}).values()):
            refusals["tls_handshake_failed"] = handshakes  # by reason in --json
        refused = ", ".join(f"{k} {v}" for k, v in sorted(refusals.items())) or "-"
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


def run_reload(args: argparse.Namespace) -> int:
    """``portd reload``: the daemon reloads; exit 0, or its reasons and exit code."""
    from portd.control import client_socket_paths, query

    query(client_socket_paths(args.socket, args.config), "reload", timeout_s=args.timeout)
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
    """``portd check``: validate as serve would and print the sockets each listener opens."""
    from portd.config import load_config, parse_config_text, read_stdin_config

    if args.config == "-":
        config = parse_config_text(read_stdin_config(), "<stdin>")
    else:
        config = load_config(args.config)
    resolve_daemon(config)
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
    for listener in config.listeners:
        for text in listener.tls.warnings if listener.tls else ():
            print(f"portd: warning: {listener.label}: {text}", file=sys.stderr)
    return 0


def run_example_config(args: argparse.Namespace) -> int:
    """``portd example-config``: the example config shipped in the package, on stdout."""
    from portd.examples import example_config

    sys.stdout.write(example_config())
    return 0
