"""Toxic stages and pipes on a manual clock: what each toxic releases, when, and that a
change of toxics on a live pipe neither loses nor reorders a byte."""

from __future__ import annotations

import random
from typing import Any

import pytest

from portd.testing import ManualClock
from portd.toxics.pipe import HIGH_WATER_BYTES, Pipe
from portd.toxics.spec import parse_toxic
from portd.toxics.stages import CLOSE, EOF, Item


class Ends:
    """The connection a pipe's stages act on, recorded."""

    def __init__(self) -> None:
        self.clock = ManualClock(now=100.0)
        self.rng = random.Random(7)
        self.resets: list[tuple[float, str]] = []
        self.pipe: Pipe | None = None

    def reset_connection(self, reason: str) -> None:
        self.resets.append((round(self.clock.now - 100.0, 6), reason))

    def released(self) -> None:
        if self.pipe is not None:
            self.pipe.released()


class Sink:
    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.items: list[tuple[float, Item]] = []

    def __call__(self, item: Item) -> None:
        self.items.append((round(self.clock.now - 100.0, 6), item))

    @property
    def data(self) -> bytes:
        return b"".join(item for _, item in self.items if isinstance(item, bytes))


def make_pipe(*tables: dict[str, Any]) -> tuple[Pipe, Ends, Sink, list[bool]]:
    ends = Ends()
    sink = Sink(ends.clock)
    pauses: list[bool] = []
    pipe = Pipe(ends, sink, pauses.append)
    ends.pipe = pipe
    pipe.set_toxics([parse_toxic(table) for table in tables])
    return pipe, ends, sink, pauses


def test_latency_delays_each_chunk_by_its_milliseconds() -> None:
    pipe, ends, sink, _ = make_pipe({"type": "latency", "latency": 100})
    pipe.push(b"one")
    ends.clock.advance(0.05)
    pipe.push(b"two")
    ends.clock.advance(0.049)
    assert sink.items == []
    ends.clock.advance(0.002)
    assert sink.items == [(0.1, b"one")]
    ends.clock.advance(0.05)
    assert sink.items == [(0.1, b"one"), (0.15, b"two")]


def test_jitter_stays_within_its_bounds_and_never_reorders() -> None:
    pipe, ends, sink, _ = make_pipe({"type": "latency", "latency": 50, "jitter": 40})
    for index in range(200):
        pipe.push(bytes([index]))
        ends.clock.advance(0.001)
    ends.clock.advance(1.0)
    assert sink.data == bytes(range(200))
    times = [when for when, _ in sink.items]
    assert times == sorted(times)
    assert all(when - index * 0.001 >= 0.010 - 1e-9 for index, (when, _) in enumerate(sink.items))


def test_bandwidth_releases_rate_kilobytes_per_second() -> None:
    pipe, ends, sink, _ = make_pipe({"type": "bandwidth", "rate": 100})  # 100,000 bytes/s
    pipe.push(b"x" * 50_000)
    ends.clock.advance(0.25)
    assert 24_000 <= len(sink.data) <= 26_000
    ends.clock.advance(0.25)
    assert len(sink.data) == 50_000


def test_slicer_cuts_chunks_to_the_average_size_plus_or_minus_the_variation() -> None:
    pipe, ends, sink, _ = make_pipe(
        {"type": "slicer", "average_size": 100, "size_variation": 30, "delay": 1000}
    )
    payload = bytes(range(256)) * 40
    pipe.push(payload)
    ends.clock.advance(1.0)
    sizes = [len(item) for _, item in sink.items]
    assert sink.data == payload
    assert all(70 <= size <= 130 for size in sizes[:-1])
    assert 90 <= sum(sizes) / len(sizes) <= 110
    gaps = {round(b - a, 6) for (a, _), (b, _) in zip(sink.items, sink.items[1:], strict=False)}
    assert gaps == {0.001}


def test_limit_data_passes_exactly_its_bytes_then_closes() -> None:
    pipe, _, sink, _ = make_pipe({"type": "limit_data", "bytes": 10})
    pipe.push(b"0123456")
    pipe.push(b"789abc")
    pipe.push(b"never")
    assert sink.data == b"0123456789"
    assert sink.items[-1][1] == CLOSE


def test_timeout_drops_bytes_and_closes_after_its_milliseconds() -> None:
    pipe, ends, sink, _ = make_pipe({"type": "timeout", "timeout": 500})
    pipe.push(b"lost")
    ends.clock.advance(0.499)
    assert sink.items == []
    ends.clock.advance(0.002)
    assert sink.items == [(0.5, CLOSE)]


def test_timeout_zero_holds_the_connection_open_for_good() -> None:
    pipe, ends, sink, _ = make_pipe({"type": "timeout", "timeout": 0})
    pipe.push(b"lost")
    ends.clock.advance(3600)
    assert sink.items == []


def test_reset_peer_resets_after_its_timeout() -> None:
    _, ends, _, _ = make_pipe({"type": "reset_peer", "timeout": 200})
    ends.clock.advance(0.19)
    assert ends.resets == []
    ends.clock.advance(0.02)
    assert ends.resets == [(0.2, "reset_peer")]


def test_cut_after_bytes_passes_that_many_then_resets() -> None:
    pipe, ends, sink, _ = make_pipe({"type": "cut_after", "after_bytes": 5})
    pipe.push(b"abc")
    pipe.push(b"defgh")
    assert sink.data == b"abcde"
    assert ends.resets == [(0.0, "cut_after")]


def test_slow_close_delays_only_the_close() -> None:
    pipe, ends, sink, _ = make_pipe({"type": "slow_close", "delay": 300})
    pipe.push(b"data")
    pipe.push(EOF)
    assert sink.items == [(0.0, b"data")]
    ends.clock.advance(0.3)
    assert sink.items == [(0.0, b"data"), (0.3, EOF)]


def test_toxics_chain_in_the_order_they_were_added() -> None:
    pipe, ends, sink, _ = make_pipe(
        {"type": "limit_data", "bytes": 4}, {"type": "latency", "latency": 10}
    )
    pipe.push(b"abcdef")
    assert sink.items == []
    ends.clock.advance(0.01)
    assert sink.items == [(0.01, b"abcd"), (0.01, CLOSE)]


def test_removing_a_toxic_gives_back_what_it_held_in_order() -> None:
    pipe, ends, sink, _ = make_pipe(
        {"type": "latency", "latency": 1000, "name": "slow"},
        {"type": "latency", "latency": 10, "name": "fast"},
    )
    for index in range(10):
        pipe.push(b"%d," % index)
    ends.clock.advance(0.5)
    fast = pipe.toxics[1]
    pipe.set_toxics([fast])  # "slow" goes: its ten chunks pass to "fast", still in order
    pipe.push(b"after")
    ends.clock.advance(0.02)
    assert sink.data == b"0,1,2,3,4,5,6,7,8,9,after"


def test_adding_a_toxic_to_a_live_pipe_acts_on_the_next_chunk() -> None:
    pipe, ends, sink, _ = make_pipe()
    pipe.push(b"before")
    pipe.set_toxics([parse_toxic({"type": "latency", "latency": 100})])
    pipe.push(b"after")
    assert sink.data == b"before"
    ends.clock.advance(0.1)
    assert sink.data == b"beforeafter"


def test_a_pipe_holding_too_much_pauses_its_source_until_it_drains() -> None:
    pipe, ends, sink, pauses = make_pipe({"type": "latency", "latency": 100})
    chunk = b"z" * 65536
    for _ in range(HIGH_WATER_BYTES // len(chunk) + 1):
        pipe.push(chunk)
    assert pauses == [True]
    ends.clock.advance(0.1)
    assert pauses == [True, False]
    assert len(sink.data) == (HIGH_WATER_BYTES // len(chunk) + 1) * len(chunk)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"type": "latancy"}, "type = 'latancy': expected one of latency, bandwidth"),
        ({"type": "latency", "latency": -1}, "latency = -1: expected a number from 0"),
        ({"type": "latency", "rate": 5}, "'rate' is not a latency key"),
        ({"type": "latency", "stream": "up"}, "stream = 'up': expected 'upstream' or"),
        ({"type": "latency", "toxicity": 2}, "toxicity = 2: expected a number from 0 to 1"),
        ({"type": "cut_after"}, "cut_after needs after_s or after_bytes above 0"),
        ({"type": "slicer", "average_size": 1.5}, "average_size = 1.5: expected a whole"),
        ({"type": "latency", "nth": True}, "nth = True: expected a number"),
        ({"type": "latency", "latency": float("nan")}, "latency = nan: expected a number"),
    ],
)
def test_a_bad_toxic_is_one_line_naming_the_key(table: dict[str, Any], message: str) -> None:
    from portd.errors import OptionError

    with pytest.raises(OptionError) as caught:
        parse_toxic(table)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_default_name_and_toxiproxys_json_shape() -> None:
    toxic = parse_toxic({"type": "latency", "latency": 100, "stream": "upstream", "nth": 2})
    assert toxic.as_json() == {
        "name": "latency_upstream",
        "type": "latency",
        "stream": "upstream",
        "toxicity": 1.0,
        "attributes": {"latency": 100, "jitter": 0, "nth": 2},
    }
