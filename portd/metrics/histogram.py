"""The connection-duration histogram of one listener: bucket counts, their sum, and how
they add up across workers. Observing costs one bisect and two additions."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

# Seconds: a quick HTTP exchange lands in the first buckets, an idle keep-alive or a
# file upload in the last ones.
DURATION_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 3600.0,
)  # fmt: skip


class Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf) and the sum observed."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = DURATION_BUCKETS_S) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (a bucket's bound is inclusive, as Prometheus's ``le``)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def to_json(self) -> dict[str, Any]:
        """What a snapshot carries: bounds, per-bucket counts, sum."""
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.total}


def add_histograms(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Snapshots of the same histogram (from several workers) added up; None for none.

    Parts with other bounds (a worker of an older portd) are left out rather than
    mixed into buckets they do not share.
    """
    if not parts:
        return None
    bounds = list(parts[0]["bounds"])
    same = [part for part in parts if list(part["bounds"]) == bounds]
    counts = [sum(column) for column in zip(*(part["counts"] for part in same), strict=True)]
    return {"bounds": bounds, "counts": counts, "sum": sum(part["sum"] for part in same)}
