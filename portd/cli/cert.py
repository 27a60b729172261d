"""``portd cert``: its arguments; the work is portd.tls.files' (imported when run).

Imported by every ``portd`` start: argparse only.
"""

from __future__ import annotations

import argparse
from typing import Any

CERT_EXIT_CODES = """\
exit status:
  0    written       64  a name that is neither a host name nor an IP address
  73   a file could not be written in DIR
  78   DIR holds a ca.pem/ca-key.pem pair that cannot be loaded"""


def add_cert_command(commands: Any) -> None:
    """``portd cert``."""
    cert = commands.add_parser(
        "cert", usage="%(prog)s [--out DIR] NAME...",
        help="write a local CA and a certificate for NAMEs (like mkcert)",
        description="Write ca.pem (made once per DIR, with ca-key.pem, then reused), and "
        "cert.pem and key.pem for the host names and IP addresses given (ECDSA P-256). "
        "Trust ca.pem in clients (curl --cacert, SSL_CERT_FILE); serve cert.pem and "
        "key.pem (tls_cert, tls_key).",
        epilog="examples:\n  portd cert localhost 127.0.0.1 ::1\n"
        "  portd cert --out /etc/portd/tls web.internal\n"
        "  curl --cacert ca.pem https://localhost:8443/\n\n" + CERT_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    cert.add_argument("names", nargs="+", metavar="NAME", help="a host name or IP address")
    cert.add_argument("--out", default=".", metavar="DIR",
                      help="where to write the files (default: the current directory)")  # fmt: skip
    cert.set_defaults(run=run_cert)


def run_cert(args: argparse.Namespace) -> int:
    """``portd cert``: write the CA (unless DIR has one) and the leaf."""
    from portd.tls.files import write_certificates

    return write_certificates(args.out, args.names)
