"""The inspect commands' arguments (wait, scan, ports, doctor, services) and the small
functions that run each.

Imported by every ``portd`` start: argparse only, nothing that opens a socket.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from portd.shell.arguments import add_family_flags, count, port_number, positive

if TYPE_CHECKING:
    from portd.endpoints.base import ProtocolName


def add_inspect_commands(commands: Any) -> None:
    """``portd wait``, ``scan``, ``ports``, ``doctor`` and ``services``."""
    raw = argparse.RawDescriptionHelpFormatter
    wait = commands.add_parser(
        "wait",
        usage="%(prog)s [options] HOST:PORT ...",
        help="wait until every HOST:PORT accepts TCP connections",
        formatter_class=raw,
        epilog="example:\n  portd wait db:5432 cache:6379 --timeout 60 && ./start-app\n\n"
        "exit status: 0 all accept, 1 timed out, 64 bad arguments",
    )
    wait.add_argument("targets", nargs="+", metavar="HOST:PORT")
    wait.add_argument(
        "--timeout",
        type=positive,
        default=30.0,
        metavar="SECS",
        help="give up after SECS (default 30); exit 1",
    )
    wait.add_argument(
        "--interval",
        type=positive,
        default=0.25,
        metavar="SECS",
        help="pause between attempts (default 0.25)",
    )
    wait.add_argument("-v", "--verbose", action="store_true", help="say when each comes up")
    wait.set_defaults(run=run_wait)

    scan = commands.add_parser(
        "scan",
        usage="%(prog)s [options] HOST PORTS",
        help="TCP connect scan of a host's ports",
        formatter_class=raw,
        epilog="example:\n  portd scan 127.0.0.1 22,80,8000-8100,https\n\n"
        "exit status: 0 scanned (whatever it found), 1 unresolvable host, 64 bad arguments",
    )
    scan.add_argument("host")
    scan.add_argument("ports", metavar="PORTS", help="e.g. 22,80,8000-8100,http")
    scan.add_argument(
        "--timeout",
        type=positive,
        default=1.0,
        metavar="SECS",
        help="per-port connect timeout (default 1)",
    )
    scan.add_argument(
        "--concurrency",
        type=count,
        default=256,
        metavar="N",
        help="connects in flight at once (default 256)",
    )
    scan.add_argument("--json", action="store_true", help="machine-readable output")
    add_family_flags(scan)
    scan.set_defaults(run=run_scan)

    _add_ports(commands)
    _add_doctor(commands)

    services = commands.add_parser(
        "services",
        usage="%(prog)s NAME|PORT",
        help="look up /etc/services: http -> 80/tcp",
        formatter_class=raw,
        epilog="examples:\n  portd services http\n  portd services 443\n\n"
        "exit status: 0 found, 1 no such service",
    )
    services.add_argument("query", metavar="NAME|PORT")
    services.set_defaults(run=run_services)


def _add_ports(commands: Any) -> None:
    ports = commands.add_parser(
        "ports",
        usage="%(prog)s [options]",
        help="every listening socket here, like ss -ltnup",
        description="Sockets of this host, like ss -ltnup (-a: ss -tuanp, -x: ss -lxp).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  portd ports --tcp --port 22\n  portd ports -a --pid 4242\n"
        "  portd ports -x\n\nexit status: 0 listed, 1 no such --pid, 64 bad arguments, "
        "69 the kernel's tables are unreadable,\n  77 --pid of another user's process",
    )
    ports.add_argument("--tcp", action="store_true", help="TCP only")
    ports.add_argument("--udp", action="store_true", help="UDP only")
    ports.add_argument("-x", "--unix", action="store_true", help="unix-domain sockets instead")
    ports.add_argument(
        "-a", "--all", action="store_true", help="every state: connections too (ss -a)"
    )
    ports.add_argument("--port", type=port_number, metavar="N", help="only port N")
    ports.add_argument("--pid", type=count, metavar="N", help="only sockets process N holds")
    ports.add_argument("--json", action="store_true", help="machine-readable output")
    ports.set_defaults(run=run_ports)


def _add_doctor(commands: Any) -> None:
    doctor = commands.add_parser(
        "doctor",
        usage="%(prog)s [options] [HOST:]PORT",
        help="why can't I reach my port? listeners, addresses, firewall, kernel",
        description="Diagnose why a port cannot be reached: who listens, which of this "
        "host's addresses accept a connection, firewall rules (nft or iptables-save), "
        "kernel settings, /etc/services. HOST defaults to every local address.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  portd doctor 8080\n  portd doctor -u 127.0.0.1:53 --json\n\n"
        "exit status: 0 nothing blocks connections, 1 a finding blocks them (or HOST does not "
        "resolve),\n  64 bad arguments, 69 the diagnosis could not run. Without root the "
        "firewall and other\n  users' processes are reported as not checked.",
    )
    doctor.add_argument("target", metavar="[HOST:]PORT")
    doctor.add_argument("-u", "--udp", action="store_true", help="a UDP port")
    doctor.add_argument(
        "-w",
        dest="timeout",
        type=positive,
        default=1.0,
        metavar="SECS",
        help="connect-test timeout per address (default 1)",
    )
    doctor.add_argument("--json", action="store_true", help="the findings as JSON")
    doctor.set_defaults(run=run_doctor)


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
        args.host,
        args.ports,
        timeout_s=args.timeout,
        concurrency=args.concurrency,
        as_json=args.json,
        families=families,
    )


def run_ports(args: argparse.Namespace) -> int:
    """``portd ports``."""
    from portd.errors import UsageError
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
