"""Listener numbers added up: the same listener in several workers, or a listener's
live numbers and those of its predecessors that ended (retired by a reload, or in a
worker that exited), so counters only ever grow for as long as the daemon runs.

A listener's numbers are the dict ``Listener.stats()`` returns (``portd status
--json`` shows it): counters, the live ``active`` gauge, counts by reason, and the
duration histogram when metrics are on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from portd.metrics.histogram import add_histograms

SUMMED = ("active", "total", "bytes_in", "bytes_out", "datagrams_in", "datagrams_dropped",
          "handler_failures")  # fmt: skip
BY_REASON = ("refusals", "closed", "events", "handler_events", "tls_handshake_failed")
DESCRIPTION = ("name", "protocol", "handler", "addresses", "origin")


def add_stats(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The numbers of one listener summed over ``parts`` (its description from the
    first part, which should be the live one)."""
    first = parts[0]
    total: dict[str, Any] = {key: first[key] for key in DESCRIPTION if key in first}
    for key in SUMMED:
        total[key] = sum(part.get(key, 0) for part in parts)
    for key in BY_REASON:
        counts: Counter[str] = Counter()
        for part in parts:
            counts.update(part.get(key, {}))
        total[key] = dict(counts)
    durations = add_histograms([part["durations"] for part in parts if "durations" in part])
    if durations is not None:
        total["durations"] = durations
    total["uptime_s"] = max(part.get("uptime_s", 0.0) for part in parts)
    return total


def ended(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers of a listener that no longer serves: its counters, nothing active."""
    return {**stats, "active": 0}


def group_by_name(entries: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Entries of several listeners (or workers) by listener name, in first-seen order."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        groups.setdefault(entry["name"], []).append(entry)
    return groups


def fold_into(totals: dict[str, dict[str, Any]], stats: Mapping[str, Any]) -> None:
    """Keep the final numbers of a listener that ended in ``totals`` (by name)."""
    name = stats["name"]
    previous = totals.get(name)
    totals[name] = add_stats([ended(stats)] if previous is None else [previous, ended(stats)])
