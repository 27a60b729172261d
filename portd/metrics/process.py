"""CPU, memory and descriptors of this process, read from /proc (no psutil import on
the scrape path), and the same numbers added up over a daemon's processes."""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping, Sequence
from typing import Any


def process_numbers() -> dict[str, Any]:
    """This process: CPU seconds, resident bytes, open and allowed descriptors, and
    its start time (seconds since the epoch)."""
    times = os.times()
    numbers: dict[str, Any] = {
        "cpu_s": times.user + times.system,
        "open_fds": len(os.listdir("/proc/self/fd")) - 1,  # noqa: PTH208 - less the one listdir holds
        "max_fds": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "processes": 1,
    }
    try:
        with open("/proc/self/statm", encoding="ascii") as file:  # noqa: PTH123
            numbers["rss_bytes"] = int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        numbers["start_time_s"] = _start_time_s()
    except (OSError, ValueError, IndexError):  # not Linux, or a /proc in a strange state
        pass
    return numbers


def _start_time_s() -> float:
    with open("/proc/self/stat", encoding="ascii") as file:  # noqa: PTH123
        after_name = file.read().rpartition(")")[2].split()
    ticks = int(after_name[19])  # field 22 of stat(5), counted after the name
    with open("/proc/stat", encoding="ascii") as file:  # noqa: PTH123
        boot = next(int(line.split()[1]) for line in file if line.startswith("btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def add_processes(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several processes' numbers as the daemon's: sums, the largest limit, the
    earliest start."""
    total: dict[str, Any] = {}
    for key in ("cpu_s", "rss_bytes", "open_fds", "processes"):
        values = [part[key] for part in parts if key in part]
        if values:
            total[key] = sum(values)
    limits = [part["max_fds"] for part in parts if "max_fds" in part]
    if limits:
        total["max_fds"] = max(limits)
    starts = [part["start_time_s"] for part in parts if "start_time_s" in part]
    if starts:
        total["start_time_s"] = min(starts)
    return total
