"""Connection counts shared by workers: every worker's slot added up, per source too,
and a table that holds exactly the live sources however entries collide and leave."""

from __future__ import annotations

import mmap
import random
from collections import Counter
from typing import Any

import pytest

from portd.config import ListenerConfig, parse_config_text
from portd.workers.tally import Region, SharedTally, TallyRegions, map_regions, table_size
from tests.workers.support import config, listener


def listener_with(**limits: Any) -> ListenerConfig:
    return parse_config_text(config(listener("e", **limits), daemon=""), "t.toml").listeners[0]


def views(regions: TallyRegions, config: ListenerConfig, workers: int) -> list[SharedTally]:
    region = regions.region_for(config)
    words = map_regions(regions.fd)
    return [SharedTally(words, region, regions.slots, slot) for slot in range(workers)]


def test_counts_and_sources_add_up_over_workers_against_a_model() -> None:
    """A small table (max_connections 8: 32 entries) and many sources: collisions, runs
    that wrap around the end, and deletions in the middle of runs."""
    regions = TallyRegions(slots=3)
    tallies = views(regions, listener_with(max_connections=8, max_connections_per_source=2), 3)
    model = [Counter[str]() for _ in tallies]
    chance = random.Random(7)
    for _ in range(20_000):
        worker = chance.randrange(3)
        source = f"10.0.0.{chance.randrange(12)}"
        live = sum(model[worker].values())
        if model[worker][source] and (live >= 8 or chance.random() < 0.5):
            tallies[worker].remove(source)
            model[worker][source] -= 1
        elif live < 8:
            tallies[worker].add(source)
            model[worker][source] += 1
        every = sum(model, Counter())
        assert tallies[chance.randrange(3)].count() == sum(every.values())
        assert tallies[chance.randrange(3)].of(source) == every[source]
    regions.close()


def test_a_listener_without_a_per_source_cap_keeps_only_the_count() -> None:
    regions = TallyRegions(slots=2)
    config = listener_with()
    assert table_size(config) == 0
    first, second = views(regions, config, 2)
    first.add("a")
    second.add("a")
    assert (first.count(), second.of("a")) == (2, 0)
    regions.close()


def test_a_dead_workers_slot_is_cleared_and_the_others_kept() -> None:
    regions = TallyRegions(slots=2)
    config = listener_with(max_connections_per_source=5)
    first, second = views(regions, config, 2)
    for _ in range(3):
        first.add("x")
    second.add("x")
    regions.clear_slot(0)
    assert (second.count(), second.of("x")) == (1, 1)
    regions.close()


def test_a_reload_keeps_a_listeners_region_unless_its_table_must_change() -> None:
    regions = TallyRegions(slots=2)
    same = regions.region_for(listener_with(max_connections=10))
    assert regions.region_for(listener_with(max_connections=99)) == same
    capped = listener_with(max_connections=99, max_connections_per_source=1)
    bigger = regions.region_for(capped)
    assert bigger != same
    assert bigger.table == table_size(capped) > 0
    regions.close()


@pytest.mark.parametrize("max_connections", [1, 1000, 1_000_000])
def test_tables_hold_twice_what_one_worker_may_hold(max_connections: int) -> None:
    config = listener_with(max_connections=max_connections, max_connections_per_source=1)
    size = table_size(config)
    assert size & (size - 1) == 0
    assert size >= min(2 * max_connections, 1 << 21)


def test_a_worker_maps_the_regions_as_they_are_at_its_start() -> None:
    regions = TallyRegions(slots=1)
    region = regions.region_for(listener_with())
    words = map_regions(regions.fd)
    assert len(words) == regions.words >= region.slot_words()
    assert isinstance(words.obj, mmap.mmap)
    assert Region(0, 0).slot_words() == 1
    regions.close()
