"""Connection counts shared by a daemon's workers, so ``max_connections`` and
``max_connections_per_source`` hold for the whole daemon, not per process.

One memfd holds a region per listener; a region has a slot per worker process, and
each slot is written by its worker only (no lock on the connection path): its count of
live connections and, when the listener caps connections per source, a table of its
live sources (open addressing, 64-bit keys, deleted by shifting back, so the table
holds exactly the live sources). A worker admitting a peer adds up every slot.

Two workers admitting at the same instant may both see room for one more, so a cap
can be passed by at most (workers - 1) connections for that instant; a worker reading
a table while its owner shifts an entry back may miss that source for the instant.
The source keys are hash() of the source text, the same in every worker because they
are all forks of one spawner, whose interpreter drew its hash seed at random when the
daemon started (a client cannot choose colliding sources offline). A worker that dies
leaves counts behind: the parent clears its slot before the slot serves again.
"""

from __future__ import annotations

import mmap
import os
from typing import NamedTuple

from portd.config import ListenerConfig
from portd.limits import Tally

WORD = 8
MAX_TABLE = 1 << 21  # sources per worker and listener: max_connections is at most 1e6
KEY_MASK = (1 << 63) - 1


class Region(NamedTuple):
    """Where one listener's counts are: the word offset of slot 0, and the size of
    each slot's source table (0: no per-source cap, only the count)."""

    offset: int
    table: int

    def slot_words(self) -> int:
        """Words per slot: the count, then (key, count) pairs."""
        return 1 + 2 * self.table


def table_size(config: ListenerConfig) -> int:
    """Entries of a slot's source table: twice the sources one worker can hold at once
    (at most max_connections), rounded up to a power of two; 0 without the cap."""
    limits = config.limits
    if not limits.max_connections_per_source:
        return 0
    size = 1
    while size < 2 * limits.max_connections + 2:
        size <<= 1
    return min(size, MAX_TABLE)


class TallyRegions:
    """The parent's side: the memfd, a region per listener, clearing a dead worker's slot."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.fd = os.memfd_create("portd-connection-counts", os.MFD_CLOEXEC)
        self.words = 0
        self.regions: dict[str, Region] = {}

    def region_for(self, config: ListenerConfig) -> Region:
        """The listener's region: the one it had (across reloads, so connections its
        old workers still serve keep counting), or a new one when its table must grow."""
        table = table_size(config)
        region = self.regions.get(config.name)
        if region is None or region.table != table:
            region = Region(self.words, table)
            self.words += self.slots * region.slot_words()
            os.ftruncate(self.fd, self.words * WORD)  # sparse: untouched pages cost nothing
            self.regions[config.name] = region
        return region

    def clear_slot(self, slot: int) -> None:
        """Forget what the worker in ``slot`` counted (it exited; its connections are gone)."""
        if not self.words:
            return
        with mmap.mmap(self.fd, self.words * WORD) as memory:
            words = memoryview(memory).cast("q")
            for region in self.regions.values():
                start = region.offset + slot * region.slot_words()
                words[start : start + region.slot_words()] = memoryview(
                    bytes(region.slot_words() * WORD)
                ).cast("q")
            words.release()

    def close(self) -> None:
        """Release the memfd (workers keep their own mappings)."""
        os.close(self.fd)


class SharedTally(Tally):
    """One worker's view of a listener's region: it writes its slot, reads them all."""

    __slots__ = ("_base", "_mask", "_mine", "_slots", "_table", "_words")

    def __init__(self, words: memoryview, region: Region, slots: int, slot: int) -> None:
        # Not Tally.__init__: the counts live in shared memory, not in attributes.
        self._words = words
        self._table = region.table
        self._mask = region.table - 1
        size = region.slot_words()
        self._slots = [region.offset + index * size for index in range(slots)]
        self._base = region.offset + slot * size
        self._mine = self._base + 1  # this worker's table

    def count(self) -> int:
        """The daemon's live connections of this listener (every worker's)."""
        words = self._words
        return sum(words[start] for start in self._slots)

    def of(self, source: str) -> int:
        """The daemon's live connections of ``source``."""
        if not self._table:
            return 0
        key = _key(source)
        return sum(self._lookup(start + 1, key)[1] for start in self._slots)

    def add(self, source: str) -> None:
        """One more connection, counted in this worker's slot."""
        self._words[self._base] += 1
        if self._table:
            position, count = self._lookup(self._mine, key := _key(source))
            words = self._words
            words[position + 1] = count + 1  # the count before the key: a reader that
            words[position] = key  # sees the key sees its count

    def remove(self, source: str) -> None:
        """A connection counted in this worker's slot ended."""
        self._words[self._base] -= 1
        if self._table:
            position, count = self._lookup(self._mine, _key(source))
            if count > 1:
                self._words[position + 1] = count - 1
            elif count == 1:
                self._delete(position)

    def _lookup(self, table: int, key: int) -> tuple[int, int]:
        """The word position of ``key`` in the table at ``table`` (or of the free entry
        where it would go) and its count (0 when absent)."""
        words, mask = self._words, self._mask
        index = key & mask
        for _ in range(self._table):
            position = table + 2 * index
            found = words[position]
            if found == key:
                return position, words[position + 1]
            if found == 0:
                return position, 0
            index = (index + 1) & mask
        return table, 0  # full (cannot happen below max_connections): count nothing

    def _delete(self, position: int) -> None:
        """Empty an entry, shifting later entries of its probe run back over it."""
        words, mask, table = self._words, self._mask, self._mine
        hole = (position - table) // 2
        index = hole
        while True:
            index = (index + 1) & mask
            key = words[table + 2 * index]
            if key == 0:
                break
            home = key & mask
            between = (hole < home <= index) if hole <= index else (home > hole or home <= index)
            if between:
                continue  # still reachable from its home: it stays
            words[table + 2 * hole + 1] = words[table + 2 * index + 1]
            words[table + 2 * hole] = key
            hole = index
        words[table + 2 * hole] = 0
        words[table + 2 * hole + 1] = 0


def _key(source: str) -> int:
    return (hash(source) & KEY_MASK) or 1  # 0 marks a free entry


def map_regions(fd: int) -> memoryview:
    """A worker's mapping of every region (the memfd as it is at the worker's start)."""
    size = os.fstat(fd).st_size
    if not size:
        return memoryview(bytearray(WORD)).cast("q")
    return memoryview(mmap.mmap(fd, size)).cast("q")
