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
    "allow", "deny",
)  # fmt: skip


def stdio_gate(pairs: Sequence[str]) -> Any:
    """A ConnectionGate for ``--set`` pairs; one line per bad value, as the daemon says it.

    Raises:
        UsageError: a key stdio -k does not take, or a value out of range (64).
    """
    from portd.limits import LIMIT_OPTIONS, ConnectionGate, Limits
    from portd.shell.adhoc import parse_sets

    known = {option.name: option for option in LIMIT_OPTIONS if option.name in STDIO_LIMIT_KEYS}
    checked: dict[str, Any] = {}
    for key, value in parse_sets(pairs).items():
        option = known.get(key)
        if option is None:
            hint = "; -w SECS closes idle clients" if key == "idle_timeout_s" else ""
            raise UsageError(
                f"--set {key}: listen -k without a handler takes {', '.join(STDIO_LIMIT_KEYS)}"
                f"; handler options need --handler{hint}"
            )
        try:
            checked[key] = option.check(value)
        except OptionError as exc:
            raise UsageError(f"--set {key}={value}: {exc}") from None
    return ConnectionGate(Limits(**checked))
