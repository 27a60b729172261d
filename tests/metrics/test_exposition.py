"""The exposition of a snapshot, read back by prometheus_client's parsers: every family
once, counters and histograms as each format names them, label values escaped."""

from __future__ import annotations

from typing import Any

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from portd.listeners.stats import add_stats, fold_into
from portd.metrics.exposition import render
from portd.metrics.histogram import Histogram, add_histograms

SNAPSHOT: dict[str, Any] = {
    "version": "0.1.0",
    "listeners": [
        {
            "name": "web", "protocol": "tcp", "handler": "http-hello", "active": 2, "total": 10,
            "bytes_in": 5, "bytes_out": 7, "refusals": {"max_connections": 3},
            "closed": {"closed": 7, "reset": 1, "[Errno 32] Broken pipe": 1},
            "handler_failures": 1, "events": {"odd": 1},
            "tls_handshake_failed": {"plaintext_http": 2, "eof": 1},
            "handler_events": {'toxic "quoted"\\n': 4},
            "durations": {"bounds": [0.1, 1.0], "counts": [3, 4, 1], "sum": 5.5},
        },
        {
            "name": "dns", "protocol": "udp", "handler": "echo", "active": 0, "total": 0,
            "bytes_in": 5, "bytes_out": 7, "datagrams_in": 3, "datagrams_dropped": 1,
            "refusals": {"low_source_port": 3}, "closed": {}, "handler_failures": 0,
        },
    ],
    "workers": [{"state": "ready"}, {"state": "starting"}],
    "worker_restarts": 1,
    "process": {"cpu_s": 1.5, "rss_bytes": 1000, "open_fds": 10, "max_fds": 1024,
                "start_time_s": 1.7e9, "processes": 3},
}  # fmt: skip


def by_sample(families: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_the_text_format_parses_to_the_snapshots_numbers() -> None:
    text = render(SNAPSHOT).decode()
    families = list(parse_text(text))
    names = [family.name for family in families]
    assert len(names) == len(set(names))  # each family written once, together
    got = by_sample(families)
    assert got[("portd_connections_accepted_total", (("listener", "web"),))] == 10
    assert ("portd_connections_accepted_total", (("listener", "dns"),)) not in got  # udp
    closed = {
        labels: v for (name, labels), v in got.items() if name == "portd_connections_closed_total"
    }
    assert closed[(("how", "error"), ("listener", "web"))] == 1  # an error's text: no label
    assert got[("portd_tls_handshake_failures_total",
                (("listener", "web"), ("reason", "plaintext_http")))] == 2  # fmt: skip
    assert (
        got[("portd_tls_handshake_failures_total", (("listener", "web"), ("reason", "eof")))] == 1
    )
    assert got[("portd_listener_events_total", (("event", "odd"), ("listener", "web")))] == 1
    assert got[("portd_handler_events_total",
                (("event", 'toxic "quoted"\\n'), ("listener", "web")))] == 4  # fmt: skip
    buckets = [got[("portd_connection_duration_seconds_bucket", (("le", le), ("listener", "web")))]
               for le in ("0.1", "1.0", "+Inf")]  # fmt: skip
    assert buckets == [3, 7, 8]  # cumulative
    assert got[("portd_workers", ())] == 1  # ready ones
    assert got[("process_cpu_seconds_total", ())] == 1.5


def test_openmetrics_names_counter_families_without_total_and_ends_with_eof() -> None:
    text = render(SNAPSHOT, openmetrics=True).decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}  # type: ignore[no-untyped-call]
    assert families["portd_connections_accepted"].type == "counter"
    assert families["portd_build"].type == "info"
    assert families["portd_connection_duration_seconds"].type == "histogram"


def test_a_histogram_counts_bounds_inclusively_and_adds_up() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 1]
    added = add_histograms([histogram.to_json(), histogram.to_json(),
                            {"bounds": [9.0], "counts": [1, 1], "sum": 1.0}])  # fmt: skip
    assert added == {"bounds": [0.1, 1.0], "counts": [4, 4, 2], "sum": 2 * histogram.total}


def test_ended_listeners_fold_into_totals_that_only_grow() -> None:
    web = SNAPSHOT["listeners"][0]
    totals: dict[str, dict[str, Any]] = {}
    fold_into(totals, web)
    fold_into(totals, web)
    assert totals["web"]["total"] == 20
    assert totals["web"]["active"] == 0  # ended: nothing live
    assert totals["web"]["refusals"] == {"max_connections": 6}
    live = add_stats([web, totals["web"]])
    assert (live["total"], live["active"], live["durations"]["counts"]) == (30, 2, [9, 12, 3])
