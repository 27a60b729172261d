"""``portd listen -k --set KEY=VALUE`` without a handler: the daemon's admission limits for
the stdio relay (connection caps, rates, allow/deny), checked as a config file checks them.

Imported only when ``--set`` is given, so plain ``portd listen`` starts as fast as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from portd.errors import OptionError, UsageError

STDIO_LIMIT_KEYS = (
    "max_connections", "max_connections_per_source", "connection_rate", "connection_burst",
    "allow", "deny", "allow_uids", "allow_gids",
)  # fmt: skip


def stdio_gate(pairs: Sequence[str], kind: str = "inet") -> Any:
    """A ConnectionGate for ``--set`` pairs; one line per bad value, as the daemon says it.

    Args:
        kind: the endpoint's kind: IP rules (allow, deny) for inet, uid/gid lists
            (allow_uids, allow_gids) for unix, as in a config file.

    Raises:
        UsageError: a key stdio -k does not take (or not for this kind), or a value out
            of range (64).
    """
    from portd.limits import LIMIT_KIND_ONLY, LIMIT_OPTIONS, ConnectionGate, Limits
    from portd.shell.adhoc import parse_sets

    taken = [key for key in STDIO_LIMIT_KEYS if LIMIT_KIND_ONLY.get(key, kind) == kind]
    known = {option.name: option for option in LIMIT_OPTIONS if option.name in taken}
    checked: dict[str, Any] = {}
    for key, value in parse_sets(pairs).items():
        option = known.get(key)
        if option is None and key in STDIO_LIMIT_KEYS:
            raise UsageError(f"--set {key}: applies to {LIMIT_KIND_ONLY[key]} sockets only")
        if option is None:
            hint = "; -w SECS closes idle clients" if key == "idle_timeout_s" else ""
            raise UsageError(
                f"--set {key}: listen -k without a handler takes {', '.join(taken)}"
                f"; handler options need --handler{hint}"
            )
        try:
            checked[key] = option.check(value)
        except OptionError as exc:
            raise UsageError(f"--set {key}={value}: {exc}") from None
    return ConnectionGate(Limits(**checked))
