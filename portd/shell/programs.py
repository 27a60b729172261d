"""``portd listen``'s handler flags in nc's and ncat's spellings: ``-e/--exec`` and
``-c/--sh-exec`` (a program per client, the ``exec`` handler), ``--broker`` and
``--chat``; and the warning that a program on a port reachable from elsewhere can be
run by anyone who reaches it.

Imported only when one of those flags is given: plain ``portd listen`` starts as fast.
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from portd.errors import UsageError

# flag dest -> (handler, keeps listening like -k)
HANDLER_FLAGS = {"broker": ("broker", True), "chat": ("chat", True)}


def handler_from_flags(args: argparse.Namespace) -> tuple[str, dict[str, Any]] | None:
    """The handler and table entries ``--exec``, ``--sh-exec``, ``--broker`` or ``--chat``
    ask for, or None; ``--broker`` and ``--chat`` keep listening, as in ncat.

    Raises:
        UsageError: ``--exec`` text that does not split (an unbalanced quote), or empty.
    """
    if getattr(args, "exec_command", None) is not None:
        return "exec", {"command": split_command(args.exec_command)}
    if getattr(args, "sh_command", None) is not None:
        if not args.sh_command.strip():
            raise UsageError("--sh-exec: no command given")
        return "exec", {"command": args.sh_command, "shell": True}
    for dest, (handler, keeps) in HANDLER_FLAGS.items():
        if getattr(args, dest, False):
            args.keep = args.keep or keeps
            return handler, {}
    return None


def split_command(text: str) -> list[str]:
    """``'wc -c'`` -> ``["wc", "-c"]``, split as a shell splits words; no shell runs.

    Raises:
        UsageError: an unbalanced quote, or no word at all.
    """
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise UsageError(
            f"--exec {text!r}: {exc}; it is split into words as a shell would, and no shell "
            "runs (for one, use --sh-exec)"
        ) from None
    if not words:
        raise UsageError("--exec: no program given")
    return words


def warn_if_reachable(addresses: Sequence[Any], protocol: str, command: Any) -> None:
    """One line on stderr when a program now runs for peers beyond this host: who can
    run it (anyone reaching the port on every address, or on one)."""
    exposed = [address for address in addresses if _reachable_from_elsewhere(address)]
    if not exposed:
        return
    program = command if isinstance(command, str) else shlex.join(command)
    port = getattr(exposed[0], "port", 0)
    if any(_is_wildcard(address) for address in exposed):
        who = f"anyone who can reach this host on {protocol} port {port}"
    else:
        who = "anyone who can reach " + ", ".join(str(address) for address in exposed)
    print(f"portd: warning: {who} can now run {program}", file=sys.stderr, flush=True)


def _reachable_from_elsewhere(address: Any) -> bool:
    host = getattr(address, "host", None)
    if host is None:  # a unix socket: local users only, as its mode allows
        return False
    try:
        return not ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return True


def _is_wildcard(address: Any) -> bool:
    return getattr(address, "host", None) in ("0.0.0.0", "::")
