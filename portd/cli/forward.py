"""``portd forward`` and ``portd toxiproxy``: a proxy with faults from the command line,
and a daemon that answers toxiproxy's HTTP API.

    portd forward 127.0.0.1:6000 db.internal:5432 --toxic latency:latency=100,jitter=10
    portd toxiproxy --port 8474

Imported by every ``portd`` start: argparse only; each command imports what it runs.
"""

from __future__ import annotations

import argparse
from typing import Any

FORWARD_EXIT_CODES = """\
exit status:
  0    stopped by SIGTERM/SIGINT after a drain
  64   bad arguments (a --toxic that does not parse, an upstream that is no HOST:PORT)
  69   the address is in use or not available
  77   a privileged port without CAP_NET_BIND_SERVICE
  78   a bad option value
  128+N  a second signal N cut the drain short"""
RAW = argparse.RawDescriptionHelpFormatter


def add_forward_commands(commands: Any) -> None:
    """forward and toxiproxy."""
    forward = commands.add_parser(
        "forward", usage="%(prog)s [options] [HOST:]PORT UPSTREAM",
        help="forward a port to an upstream, with faults (toxics)",
        description="Listen on [HOST:]PORT and forward every connection (with -u: every "
        "client's datagrams) to UPSTREAM (HOST:PORT or unix:/PATH), as socat "
        "TCP-LISTEN:PORT,fork TCP:UPSTREAM does, with toxics in the path. A bare PORT "
        "listens on loopback only.",
        epilog="toxics (toxiproxy's names; KEY=VALUE as in [[listener.toxic]]):\n"
        "  latency:latency=MS,jitter=MS   bandwidth:rate=KB_PER_S   slow_close:delay=MS\n"
        "  timeout:timeout=MS   reset_peer:timeout=MS   limit_data:bytes=N\n"
        "  slicer:average_size=N,size_variation=N,delay=US   slow_open:delay=MS\n"
        "  cut_after:after_s=S|after_bytes=N   packet_loss:loss=P,burst=N (-u)\n"
        "  every toxic: name=, stream=upstream|downstream, toxicity=P, only_new=true,\n"
        "  nth=N, peer=ADDRESS\n\n"
        "examples:\n  portd forward 6000 127.0.0.1:5432 --toxic latency:latency=100\n"
        "  portd forward -u 5353 127.0.0.1:53 --toxic packet_loss:loss=0.1\n"
        "  portd forward 6443 db.internal:5432 --upstream-tls --upstream-ca ca.pem\n\n"
        + FORWARD_EXIT_CODES,
        formatter_class=RAW,
    )  # fmt: skip
    forward.add_argument("bind", metavar="[HOST:]PORT", help="where to listen")
    forward.add_argument("upstream", metavar="UPSTREAM", help="HOST:PORT or unix:/PATH")
    forward.add_argument("-u", "--udp", action="store_true", help="forward UDP datagrams")
    forward.add_argument("--toxic", action="append", default=[], metavar="TYPE:KEY=VALUE,...",
                         help="a toxic (repeatable)")  # fmt: skip
    forward.add_argument("--connect-timeout", type=float, default=5.0, metavar="S",
                         help="upstream connect timeout in seconds (default 5)")  # fmt: skip
    forward.add_argument("--proxy-protocol", choices=("v1", "v2"),
                         help="send a PROXY header to the upstream")  # fmt: skip
    _add_tls_options(forward)
    forward.add_argument("--log-level", default="info",
                         choices=("debug", "info", "warning", "error", "critical"))  # fmt: skip
    forward.set_defaults(run=run_forward)
    _add_toxiproxy(commands)


TLS_FLAGS = {  # flag -> the listener key it sets
    "tls_cert": "tls_cert", "tls_key": "tls_key", "upstream_tls": "upstream_tls",
    "upstream_ca": "upstream_ca", "upstream_servername": "upstream_servername",
}  # fmt: skip


def _add_tls_options(forward: Any) -> None:
    tls = forward.add_argument_group("TLS (keys as in a config: tls_*, upstream_*)")
    tls.add_argument("--tls-cert", metavar="PEM", help="terminate TLS from clients with this "
                     "certificate (and --tls-key)")  # fmt: skip
    tls.add_argument("--tls-key", metavar="PEM", help="the key of --tls-cert")
    tls.add_argument("--upstream-tls", action="store_true", help="originate TLS to UPSTREAM")
    tls.add_argument("--upstream-ca", metavar="PEM",
                     help="trust this CA for the upstream (default: the system's)")  # fmt: skip
    tls.add_argument("--upstream-servername", metavar="NAME", help="the name the upstream's "
                     "certificate must carry, sent as SNI (default: UPSTREAM's host)")  # fmt: skip
    tls.add_argument("--upstream-insecure", action="store_true",
                     help="accept any upstream certificate")  # fmt: skip


def _add_toxiproxy(commands: Any) -> None:
    api = commands.add_parser(
        "toxiproxy", usage="%(prog)s [--host HOST] [--port PORT]",
        help="serve toxiproxy's HTTP API (proxies made and faulted by its clients)",
        description="A daemon with no proxies and toxiproxy's HTTP API, so toxiproxy "
        "clients (Go, Ruby, Java/testcontainers, node, Python) and curl drive portd "
        "unchanged. The API lets whoever reaches it open ports and redirect traffic: it "
        "binds loopback, and another address only with --allow-remote.",
        epilog="examples:\n  portd toxiproxy\n"
        "  curl -X POST localhost:8474/proxies -d '{\"name\": \"db\", \"listen\": "
        "\"127.0.0.1:26379\", \"upstream\": \"127.0.0.1:6379\"}'\n\n" + FORWARD_EXIT_CODES,
        formatter_class=RAW,
    )  # fmt: skip
    api.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8474, help="API port (default 8474)")
    api.add_argument("--allow-remote", action="store_true",
                     help="allow a --host that is not loopback")  # fmt: skip
    api.add_argument("--log-level", default="info",
                     choices=("debug", "info", "warning", "error", "critical"))  # fmt: skip
    api.set_defaults(run=run_toxiproxy)


def forward_config(args: argparse.Namespace) -> Any:
    """The one-listener Config of ``portd forward``.

    Raises:
        UsageError: a --toxic that does not parse (exit 64).
        ConfigError: a bad value (exit 78).
    """
    from portd.config import parse_config
    from portd.errors import OptionError, UsageError
    from portd.toxics.spec import parse_toxic_text

    protocol = "udp" if args.udp else "tcp"
    try:
        toxics = [parse_toxic_text(text, protocol) for text in args.toxic]
    except OptionError as exc:
        raise UsageError(f"--toxic: {exc}") from None
    bind = args.bind if ":" in args.bind else f"127.0.0.1:{args.bind}"
    table = {
        "name": "forward", "bind": bind, "protocol": protocol, "handler": "forward",
        "upstream": args.upstream, "connect_timeout_s": args.connect_timeout, "toxic": toxics,
    }  # fmt: skip
    if args.proxy_protocol:
        table["proxy_protocol"] = args.proxy_protocol
    table |= {key: value for flag, key in TLS_FLAGS.items() if (value := getattr(args, flag))}
    if args.upstream_insecure:
        table["upstream_verify"] = False
    daemon = {"log_level": args.log_level, "control_socket": ""}
    return parse_config({"daemon": daemon, "listener": [table]}, "portd forward")


def run_forward(args: argparse.Namespace) -> int:
    """``portd forward``: serve the one forward until SIGTERM/SIGINT."""
    from dataclasses import replace

    from portd.daemon import hold_early_reloads, run_daemon
    from portd.logging import configure_logging

    hold_early_reloads()
    config = forward_config(args)
    configure_logging(config.daemon.log_format, config.daemon.log_level)
    return int(run_daemon(replace(config, source="portd forward")))


def run_toxiproxy(args: argparse.Namespace) -> int:
    """``portd toxiproxy``: no proxies, the HTTP API, until SIGTERM/SIGINT."""
    from portd.config import Config, DaemonConfig
    from portd.daemon import hold_early_reloads, run_daemon
    from portd.logging import configure_logging
    from portd.toxiproxy.address import parse_api_address

    hold_early_reloads()
    where = f"{args.host}:{args.port}" if ":" not in args.host else f"[{args.host}]:{args.port}"
    parse_api_address(where, allow_remote=args.allow_remote)  # a bad one: one line, exit 64
    daemon = DaemonConfig(log_level=args.log_level, control_socket="", toxiproxy_api=where,
                          toxiproxy_api_remote=args.allow_remote)  # fmt: skip
    configure_logging(daemon.log_format, daemon.log_level)
    return int(run_daemon(Config("portd toxiproxy", daemon, ())))
