"""portd.memory: freed memory goes back to the system once enough was freed, and the
heap holds steady while serving; glibc's own allocator in the last tests."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from portd.memory import TRIM_DROP_BYTES, Allocator, MemoryKeeper, hold_heap_steady
from portd.testing.kit import RecordingLog

MIB = 1 << 20


class FakeAllocator:
    def __init__(self) -> None:
        self.used = 0
        self.trims = 0

    def in_use(self) -> int:
        return self.used

    def trim(self) -> None:
        self.trims += 1


def keeper() -> tuple[MemoryKeeper, FakeAllocator, RecordingLog]:
    allocator, log = FakeAllocator(), RecordingLog()
    return MemoryKeeper(allocator, log, threshold=32 * MIB), allocator, log


def test_memory_in_use_or_growing_is_never_trimmed() -> None:
    memory, allocator, _ = keeper()
    for used in (10, 200, 500, 500, 490):  # MiB: a burst of connections opening
        allocator.used = used * MIB
        assert memory.check() is False
    assert allocator.trims == 0


def test_a_drop_below_the_peak_is_trimmed_once() -> None:
    memory, allocator, log = keeper()
    allocator.used = 500 * MIB
    memory.check()
    allocator.used = 20 * MIB  # the connections closed
    assert memory.check() is True
    assert memory.check() is False  # nothing more was freed
    assert allocator.trims == 1
    assert log.events == [("debug", "memory_returned", {"freed_mib": 480.0, "in_use_mib": 20.0})]


def test_the_peak_starts_again_after_a_trim() -> None:
    memory, allocator, _ = keeper()
    for used, trimmed in [(300, False), (100, True), (120, False), (80, True), (70, False)]:
        allocator.used = used * MIB
        assert memory.check() is trimmed, used


def test_a_drop_under_the_threshold_waits() -> None:
    memory, allocator, _ = keeper()
    allocator.used = 100 * MIB
    memory.check()
    allocator.used = 69 * MIB
    assert memory.check() is False
    allocator.used = 67 * MIB
    assert memory.check() is True


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_glibc_keeps_scattered_frees_until_the_keeper_trims_them() -> None:
    """Small blocks freed with a survivor between them (as OpenSSL's per-connection
    buffers are) stay resident: malloc_trim through the keeper gives them back."""
    allocator = Allocator()
    if allocator.in_use is None:
        pytest.skip("not glibc >= 2.33: no mallinfo2/malloc_trim")
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, count = 4096, (TRIM_DROP_BYTES * 4) // 4096
    before = allocator.in_use()
    blocks = []
    for _ in range(count):
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)  # resident
        blocks.append(block)
    assert allocator.in_use() - before >= count * size  # mallinfo2's fields read right
    memory = MemoryKeeper(allocator, RecordingLog())
    assert memory.check() is False
    for index, block in enumerate(blocks):
        if index % 64:
            libc.free(block)
    held = rss()
    try:
        assert memory.check() is True
        assert held - rss() > TRIM_DROP_BYTES * 2  # most of the 128 MiB went back
    finally:
        for block in blocks[::64]:
            libc.free(block)


CHURN = """
import ctypes, resource, sys
from portd.memory import hold_heap_steady
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
held = hold_heap_steady() if sys.argv[1] == "steady" else None
def churn(size, count):  # read buffers, as uvloop's TLS layer makes them
    blocks = [libc.malloc(size) for _ in range(count)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    for block in reversed(blocks):
        libc.free(block)
churn(300 << 10, 1)  # an mmap'd block freed: glibc's thresholds move to 300 / 600 KiB
churn(256 << 10, 4)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    churn(256 << 10, 4)
print(held, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES_PER_ROUND = 4 * (256 << 10) // 4096


def churn(mode: str, **environ: str) -> tuple[str, int]:
    """What hold_heap_steady returned ("None": not called) and the page faults counted."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    done = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True,
                          timeout=60, check=True, env={**env, **environ})  # fmt: skip
    held, faults = done.stdout.split()
    return held, int(faults)


def test_the_heap_holds_steady_where_glibc_would_give_it_back_on_every_read() -> None:
    """With glibc's moving thresholds, four 256 KiB buffers made and freed again and
    again are faulted in afresh each time (the heap's top given back with brk);
    with hold_heap_steady, once only, before the counted rounds."""
    if Allocator().set_option is None:
        pytest.skip("not glibc: no mallopt")
    held, faults = churn("default")
    assert (held, faults > 50 * PAGES_PER_ROUND // 2) == ("None", True)  # the trap is real
    held, faults = churn("steady")
    assert (held, faults < PAGES_PER_ROUND) == ("True", True)


def test_thresholds_the_operator_set_in_the_environment_are_left_alone() -> None:
    """MALLOC_MMAP_THRESHOLD_=128 KiB puts every 256 KiB buffer in an mmap of its own,
    faulted in each time: hold_heap_steady leaves that setting as it is."""
    if Allocator().set_option is None:
        pytest.skip("not glibc: no mallopt")
    held, faults = churn("steady", MALLOC_MMAP_THRESHOLD_="131072")
    assert (held, faults > 50 * PAGES_PER_ROUND // 2) == ("False", True)


class FakeOptions:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def set_option(self, option: int, value: int) -> bool:
        self.calls.append((option, value))
        return True


@pytest.mark.parametrize(
    ("environ", "left"),
    [
        ({}, set()),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, {"trim"}),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}, {"mmap"}),
        ({"MALLOC_MMAP_THRESHOLD_": "1", "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"},
         {"mmap", "trim"}),
    ],
)  # fmt: skip
def test_hold_heap_steady_sets_what_the_environment_does_not(
    environ: dict[str, str], left: set[str]
) -> None:
    options = FakeOptions()
    held = hold_heap_steady(options, environ)
    expected = {("mmap", (-3, 4 << 20)), ("trim", (-1, 16 << 20))}
    assert set(options.calls) == {call for name, call in expected if name not in left}
    assert held is (not left)
