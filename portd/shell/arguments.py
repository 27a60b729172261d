"""The netcat commands' arguments (listen, connect), the argument types every command
shares, and the small functions that run listen and connect; the flags follow OpenBSD nc
where nc has one.

Imported by every ``portd`` start: argparse only, nothing that opens a socket.
"""

from __future__ import annotations

import argparse
from typing import Any

EXIT_CODES = """\
exit status:
  0    done (listen: the peer closed and stdin is sent; connect -z: a port accepted;
       listen --exec: the one client's program ended, whatever its own status)
  1    connect refused or timed out, a host that does not resolve, a reset, stdout full,
       a TLS handshake that failed (a certificate that did not verify: OpenSSL's reason)
  64   bad arguments     69  address busy or not available     77  privileged port
  78   --cert, --key or --ca cannot be loaded      130  interrupted (Ctrl-C)
  143  terminated (SIGTERM; listen cleans up first)"""


MAX_SECONDS = 31_536_000.0  # a year: longer waits overflow the kernel's timeouts (time_t)


def positive(text: str) -> float:
    """A number of seconds above 0 (and at most a year)."""
    value = seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def seconds(text: str) -> float:
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


def non_negative(text: str) -> float:
    """-i SECS: 0 or more seconds."""
    value = seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, got {text!r}")
    return value


def port_number(text: str) -> int:
    """1-65535, digits only."""
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got {text!r}")
    return int(text)


def count(text: str) -> int:
    """A positive integer."""
    if not (text.isascii() and text.isdigit()) or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def add_family_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-4", dest="ipv4", action="store_true", help="IPv4 only")
    parser.add_argument("-6", dest="ipv6", action="store_true", help="IPv6 only")


def _add_relay_flags(parser: argparse.ArgumentParser) -> None:
    """The flags listen and connect share: EOF rules, line shaping, -n, -N, -v."""
    parser.add_argument(
        "-u", "--udp", action="store_true", help="UDP (with -U: a unix datagram socket)"
    )
    parser.add_argument(
        "-U",
        dest="unix",
        action="store_true",
        help="a unix-domain socket: the word is its PATH, or @NAME (nc -U; or unix:PATH)",
    )
    add_family_flags(parser)
    parser.add_argument(
        "--close-on-eof",
        action="store_true",
        help="close the connection when stdin ends (default: half-close, keep reading)",
    )
    parser.add_argument(
        "-N",
        dest="half_close",
        action="store_true",
        help="half-close when stdin ends (nc -N; portd's default)",
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
        type=seconds,
        metavar="SECS",
        help="after stdin ends, quit SECS later (negative: wait for the peer)",
    )
    parser.add_argument(
        "-n",
        dest="numeric",
        action="store_true",
        help="numeric addresses only: no DNS lookup (nc -n)",
    )
    parser.add_argument(
        "-C",
        dest="crlf",
        action="store_true",
        help="send line ends as CRLF (a LF not after a CR becomes CRLF)",
    )
    parser.add_argument(
        "-i",
        dest="interval",
        type=non_negative,
        metavar="SECS",
        default=0.0,
        help="send stdin line by line, SECS apart (nc -i)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="report peers, and byte counts with sha256 at the end, on stderr",
    )


def add_tls_flags(parser: argparse.ArgumentParser, *, client: bool) -> None:
    """--tls and its files; a client also takes --ca, --servername and --insecure."""
    tls = parser.add_argument_group("TLS")
    what = (
        "verify the server against the system's CAs"
        if client
        else "without --cert: an ephemeral self-signed certificate, its fingerprint on stderr"
    )
    tls.add_argument("--tls", action="store_true", help=f"TLS ({what})")
    role = "client certificate (mutual TLS)" if client else "certificate (a chain is sent whole)"
    tls.add_argument("--cert", metavar="FILE", help=f"PEM {role}; may hold the key too")
    tls.add_argument("--key", metavar="FILE", help="PEM private key of --cert")
    if client:
        tls.add_argument("--ca", metavar="FILE", help="trust these PEM CAs instead of the system's")
        tls.add_argument("--servername", metavar="NAME",
                         help="the name sent (SNI) and checked (default: HOST)")  # fmt: skip
        tls.add_argument("--insecure", action="store_true",
                         help="check neither certificate nor name (said on stderr)")  # fmt: skip


def check_tls_flags(args: argparse.Namespace) -> None:
    """The TLS files and switches need --tls; TLS needs a stream.

    Raises:
        UsageError: one of them without --tls, --key without --cert, --tls with -u.
    """
    from portd.errors import UsageError

    names = ("cert", "key", "ca", "servername", "insecure")
    given = [f"--{name}" for name in names if getattr(args, name, None)]
    if given and not args.tls:
        raise UsageError(f"{', '.join(given)}: give --tls too")
    if args.tls and args.udp:
        raise UsageError("--tls needs a stream (TCP or unix) socket: DTLS is not supported (-u)")
    if getattr(args, "key", None) and not args.cert:
        raise UsageError("--key needs --cert")
    if args.tls and getattr(args, "zero_io", False):
        raise UsageError("-z only checks that a port accepts: drop --tls, or connect with "
                         "--tls to check the handshake")  # fmt: skip


def _epilog(examples: str) -> str:
    return f"examples:\n{examples}\n\n{EXIT_CODES}"


def add_listen(commands: Any) -> None:
    """``portd listen``."""
    listen = commands.add_parser(
        "listen",
        usage="%(prog)s [options] [HOST:]PORT | HOST PORT | -p PORT [HOST] | -U PATH",
        help="nc -l: accept a connection, relay stdin/stdout",
        description="Listen like nc -l; stdout carries only data, everything else goes to "
        "stderr. nc's spellings work: -l (implied), -p PORT, HOST PORT, bundles (-lvnp 5555).",
        epilog=_epilog(
            "  portd listen 5555 > file.out         receive a file (nc -l 5555 > file.out)\n"
            "  portd listen -lvnp 5555              the same, as nc users type it\n"
            "  portd listen 127.0.0.1 0 --port-file p  kernel's choice of port, written to p\n"
            "  portd listen -U app.sock             a unix-domain socket (nc -lU; or unix:PATH)\n"
            "  portd listen -k --echo 7000          an echo server, until Ctrl-C\n"
            "  portd listen -k --exec 'wc -c' 7000  a program per client (nc -e), until Ctrl-C\n"
            "  portd listen --tls 8443              TLS with an ephemeral certificate\n"
            "  portd listen --tls --cert c.pem --key k.pem --http 8443   https://"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listen.add_argument(
        "where",
        nargs="*",
        metavar="[HOST:]PORT",
        help="where to listen: [HOST:]PORT, HOST PORT, HOST with -p PORT, unix:PATH, "
        "or PATH with -U",
    )
    listen.add_argument(
        "-l", dest="listen", action="store_true", help="listen (implied; accepted for nc -l)"
    )
    listen.add_argument("-p", dest="port", metavar="PORT", help="the port (nc -l -p PORT)")
    listen.add_argument("-s", dest="source", metavar="ADDR", help="the local address (nc -s)")
    listen.add_argument(
        "-k", "--keep", action="store_true", help="keep listening and serve clients concurrently"
    )
    listen.add_argument(
        "--max-clients",
        type=count,
        default=128,
        metavar="N",
        help="with -k: serve at most N clients at once, refuse (RST) the next (default 128)",
    )
    listen.add_argument(
        "-w",
        dest="wait",
        type=positive,
        metavar="SECS",
        help="close a connection idle for SECS (nc -w; listening waits on)",
    )
    _add_relay_flags(listen)
    listen.add_argument(
        "--port-file",
        metavar="FILE",
        help="write the bound port to FILE once listening (a unix socket: its absolute path)",
    )
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
    handler.add_argument(
        "-e",
        "--exec",
        dest="exec_command",
        metavar="'PROG ARGS'",
        help="run PROG for each client with the connection as its stdin and stdout (nc -e, "
        "ncat --exec; split like a shell would, no shell runs); -k: one per client",
    )
    handler.add_argument(
        "-c",
        "--sh-exec",
        dest="sh_command",
        metavar="'COMMAND'",
        help="the same, COMMAND run by /bin/sh -c (ncat -c, --sh-exec)",
    )
    handler.add_argument(
        "--broker",
        action="store_true",
        help="pass what each client sends to every other client (ncat --broker; implies -k)",
    )
    handler.add_argument(
        "--chat",
        action="store_true",
        help="the same for lines, named <user1>, <user2>, ... (ncat --chat; implies -k)",
    )
    listen.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a handler option or, with -k, a limit (repeatable)",
    )
    add_tls_flags(listen, client=False)
    listen.set_defaults(run=run_listen)


def add_connect(commands: Any) -> None:
    """``portd connect``."""
    connect = commands.add_parser(
        "connect",
        usage="%(prog)s [options] HOST PORT | HOST:PORT | -U PATH",
        help="nc HOST PORT: connect, relay stdin/stdout",
        description="Connect like nc HOST PORT; stdout carries only data.",
        epilog=_epilog(
            "  portd connect host.example 5000 < file   send a file\n"
            "  portd connect 127.0.0.1:5000             HOST:PORT works too\n"
            "  portd connect -U app.sock                a unix-domain socket (nc -U)\n"
            "  portd connect -zv 127.0.0.1 8000-8010    which ports accept (nc -z)\n"
            "  printf 'GET / HTTP/1.0\\n\\n' | portd connect -C example.org 80\n"
            "  portd connect --tls -v example.org 443   TLS, verified; -v: version, cipher, peer\n"
            "  portd connect --tls --ca ca.pem localhost 8443"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    connect.add_argument(
        "target",
        nargs="+",
        metavar="HOST PORT",
        help="HOST PORT or HOST:PORT ([IPv6]:PORT), or unix:PATH (PATH with -U); "
        "with -z, PORT may be LOW-HIGH",
    )
    connect.add_argument(
        "-w",
        dest="wait",
        type=positive,
        metavar="SECS",
        help="connect timeout, and close when idle for SECS (nc -w; "
        "default: 10 s to connect, no idle limit)",
    )
    connect.add_argument(
        "-p",
        dest="source_port",
        type=port_number,
        metavar="PORT",
        help="the local (source) port (nc -p)",
    )
    connect.add_argument(
        "-s",
        dest="source",
        metavar="ADDR",
        help="the local (source) address (nc -s); with -U, the client's own socket PATH",
    )
    connect.add_argument(
        "-z",
        dest="zero_io",
        action="store_true",
        help="only check that the port(s) accept; PORT may be LOW-HIGH",
    )
    _add_relay_flags(connect)
    add_tls_flags(connect, client=True)
    connect.set_defaults(run=run_connect)


def add_shell_commands(commands: Any) -> None:
    """listen and connect, in the order ``portd --help`` lists them."""
    add_listen(commands)
    add_connect(commands)


def run_listen(args: argparse.Namespace) -> int:
    """``portd listen``: stdio relay, or a handler with --handler/--echo/--http."""
    from portd.errors import UsageError
    from portd.shell.listen import ListenOptions
    from portd.shell.listen import run_listen as listen

    check_tls_flags(args)
    table: dict[str, Any] = {}
    if args.exec_command is not None or args.sh_command is not None or args.broker or args.chat:
        from portd.shell.programs import handler_from_flags

        args.handler, table = handler_from_flags(args) or (args.handler, {})
    options = ListenOptions(args)
    if args.handler:
        from portd.shell.adhoc import run_handler

        return run_handler(options, options.bind_text, args.handler, args.set, table)
    if args.set and not args.keep:
        raise UsageError("--set needs --handler (or --echo/--http), or -k for a limit")
    return listen(options)


def run_connect(args: argparse.Namespace) -> int:
    """``portd connect``."""
    from portd.shell.connect import run_connect as connect

    check_tls_flags(args)
    return connect(args)
