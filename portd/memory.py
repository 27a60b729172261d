"""Giving freed memory back to the system after a burst of connections ends.

glibc's malloc keeps what the program frees: only free space at the top of a heap is
returned on its own. OpenSSL allocates many small buffers per TLS connection, mixed
with longer-lived ones, so after 10,000 TLS connections closed the daemon held 400 MiB
it no longer used (uvloop's transport, MagicStack/uvloop#565), and it grew with each
such burst. ``malloc_trim(0)`` returns every free page, in the middle of a heap too.

The daemon reads every CHECK_INTERVAL_S how much of its heaps is in use
(``mallinfo2``, 30 µs) and trims once that has fallen TRIM_DROP_BYTES below its highest
reading since the last trim: what was freed was in use, so its pages are resident. The
free space itself says nothing: it counts address space never touched (a TLS buffer
is allocated whole and filled in part), and trimming it again costs a walk for nothing.
Nothing runs on the data path; the trim after 10,000 TLS connections took 50 ms and
returned 380 MiB. Without glibc (musl) there is nothing to call and nothing is done.

While serving, the opposite must not happen: memory given back and faulted in again for
every read. uvloop reads up to 256 KiB at a time, and its TLS layer joins what it
decrypts and encrypts into buffers of that size. glibc picks where such a buffer comes
from by thresholds it moves as the program runs (freeing an mmap'd block raises the
mmap threshold to its size and the top-of-heap trim threshold to twice that), so a
daemon's speed depended on its history: one TLS echo connection ran at 900 MB/s with
no page faults, the next at 380 MB/s with 240,000 a second, the heap's top given back
with brk and faulted in again on each read. ``hold_heap_steady`` fixes both thresholds
at start (MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES), unless the operator set them in
the environment; what a burst leaves behind is still returned by the keeper above.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Mapping
from typing import Any

CHECK_INTERVAL_S = 10.0
TRIM_DROP_BYTES = 32 << 20
MMAP_THRESHOLD_BYTES = 4 << 20  # larger blocks are mmap'd: far above a 256 KiB read
TRIM_THRESHOLD_BYTES = 16 << 20  # free space the heap's top keeps between reads, at most
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
_THRESHOLDS = (  # mallopt's parameter, portd's value, and how an operator sets it
    (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES, "MALLOC_MMAP_THRESHOLD_", "malloc.mmap_threshold"),
    (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES, "MALLOC_TRIM_THRESHOLD_", "malloc.trim_threshold"),
)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


class Allocator:
    """The C allocator's bytes in use and its trim; ``None`` where libc lacks them."""

    def __init__(self) -> None:
        self.in_use: Callable[[], int] | None = None
        self.trim: Callable[[], object] | None = None
        self.set_option: Callable[[int, int], bool] | None = None  # mallopt
        try:
            libc = ctypes.CDLL(None)
            mallinfo2, malloc_trim, mallopt = libc.mallinfo2, libc.malloc_trim, libc.mallopt
        except (OSError, AttributeError):  # not glibc, or older than 2.33
            return
        mallinfo2.restype = _MallInfo2
        malloc_trim.argtypes = [ctypes.c_size_t]
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        self.in_use = lambda: int(mallinfo2().uordblks)
        self.trim = lambda: malloc_trim(0)
        self.set_option = lambda option, value: mallopt(option, value) == 1


def hold_heap_steady(allocator: Any = None, environ: Mapping[str, str] = os.environ) -> bool:
    """Fix glibc's mmap and trim thresholds (see the module's docstring), once per
    process before it serves, except where the operator set one (``MALLOC_*_`` or
    ``GLIBC_TUNABLES``); True if both are portd's now, False where it left any (or the
    allocator is not glibc's)."""
    allocator = allocator or Allocator()
    if allocator.set_option is None:
        return False
    tunables = environ.get("GLIBC_TUNABLES", "")
    steady = True
    for option, value, variable, tunable in _THRESHOLDS:
        if variable in environ or tunable in tunables:
            steady = False
        else:
            steady = allocator.set_option(option, value) and steady
    return steady


class MemoryKeeper:
    """Trims the C heap once the bytes in use fell ``threshold`` below their peak."""

    def __init__(self, allocator: Any, log: Any, threshold: int = TRIM_DROP_BYTES) -> None:
        self.allocator = allocator
        self.log = log
        self.threshold = threshold
        self.peak = 0  # the highest reading since the last trim
        self.trims = 0

    @property
    def available(self) -> bool:
        """True where the allocator can say what is in use and trim."""
        return self.allocator.in_use is not None and self.allocator.trim is not None

    def check(self) -> bool:
        """Trim if enough was freed since the peak; True if it trimmed."""
        in_use = self.allocator.in_use()
        self.peak = max(self.peak, in_use)
        freed = self.peak - in_use
        if freed < self.threshold:
            return False
        self.allocator.trim()
        self.trims += 1
        self.peak = in_use
        self.log.debug(
            "memory_returned", freed_mib=round(freed / (1 << 20), 1),
            in_use_mib=round(in_use / (1 << 20), 1),
        )  # fmt: skip
        return True


async def keep_memory_returned(log: Any, interval_s: float = CHECK_INTERVAL_S) -> None:
    """Run MemoryKeeper.check every ``interval_s`` until cancelled (a daemon task)."""
    import anyio

    keeper = MemoryKeeper(Allocator(), log)
    if not keeper.available:
        return
    while True:
        await anyio.sleep(interval_s)
        keeper.check()
