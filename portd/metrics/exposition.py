"""A status snapshot as Prometheus text (format 0.0.4) or OpenMetrics 1.0.0.

The snapshot is the one ``portd status --json`` prints, with the workers added up and
``process`` filled in (see portd.metrics.process); every listener appears once, its
counters including those of its predecessors that ended, so a series only grows.
Series of one family are written together, HELP and TYPE first, as both formats ask.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# How connections end (StreamConnection.how_it_ended); any other text is an error's.
ENDINGS = frozenset({"closed", "reset", "aborted", "handler_failed", "idle_timeout",
                     "send_timeout"})  # fmt: skip

Sample = tuple[str, dict[str, str], float]  # suffix, labels, value
Listeners = Sequence[Mapping[str, Any]]


class Family:
    """One metric family: name (without _total), type, help, and its samples."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[Sample] = []

    def add(self, value: float, suffix: str = "", **labels: str) -> None:
        """One sample (``suffix``: ``_total`` for counters, ``_bucket`` ...)."""
        self.samples.append((suffix, labels, value))

    def render(self, openmetrics: bool) -> Iterator[str]:
        """The family's lines in the chosen format."""
        if not self.samples:
            return
        kind, name = self.kind, self.name
        if not openmetrics and kind in ("counter", "info"):
            # The 0.0.4 format names these families after their one sample name, and
            # has no info type (a gauge of 1 says the same).
            name += "_total" if kind == "counter" else "_info"
            kind = "counter" if kind == "counter" else "gauge"
        yield f"# HELP {name} {self.help}"
        yield f"# TYPE {name} {kind}"
        for suffix, labels, value in self.samples:
            yield f"{self.name}{suffix}{_labels(labels)} {_number(value)}"


def render(snapshot: Mapping[str, Any], openmetrics: bool = False) -> bytes:
    """The whole exposition of ``snapshot``."""
    lines: list[str] = []
    for family in families(snapshot):
        lines.extend(family.render(openmetrics))
    if openmetrics:
        lines.append("# EOF")
    return ("\n".join(lines) + "\n").encode("utf-8")


def families(snapshot: Mapping[str, Any]) -> list[Family]:
    """Every family, listeners' first, then the workers' and the processes'."""
    listeners: Listeners = snapshot.get("listeners", [])
    found = [build(listeners) for build in LISTENER_FAMILIES]
    found += _event_families(listeners)
    found += _daemon_families(snapshot)
    return found


def _per_listener(
    name: str, kind: str, help_text: str, value: Callable[[Mapping[str, Any]], float | None]
) -> Callable[[Listeners], Family]:
    def build(listeners: Listeners) -> Family:
        family = Family(name, kind, help_text)
        for listener in listeners:
            number = value(listener)
            if number is not None:
                family.add(number, "_total" if kind == "counter" else "", listener=listener["name"])
        return family

    return build


def _by_reason(
    name: str, help_text: str, key: str, label: str, protocol: str | None = None
) -> Callable[[Listeners], Family]:
    def build(listeners: Listeners) -> Family:
        family = Family(name, "counter", help_text)
        for listener in listeners:
            if protocol is not None and listener.get("protocol") != protocol:
                continue
            for reason, count in sorted(_normalised(key, listener.get(key, {})).items()):
                family.add(count, "_total", **{"listener": listener["name"], label: reason})
        return family

    return build


def _normalised(key: str, counts: Mapping[str, int]) -> dict[str, int]:
    if key != "closed":
        return dict(counts)
    merged: dict[str, int] = {}
    for how, count in counts.items():
        name = how if how in ENDINGS else "error"
        merged[name] = merged.get(name, 0) + count
    return merged


def _info(listeners: Listeners) -> Family:
    family = Family("portd_listener", "info", "A configured listener: its protocol and handler")
    for listener in listeners:
        family.add(1, "_info", listener=listener["name"], protocol=listener.get("protocol", ""),
                   handler=listener.get("handler", ""))  # fmt: skip
    return family


def _tcp(key: str) -> Callable[[Mapping[str, Any]], float | None]:
    return lambda listener: listener.get(key, 0) if listener.get("protocol") == "tcp" else None


def _udp(key: str) -> Callable[[Mapping[str, Any]], float | None]:
    return lambda listener: listener.get(key, 0) if listener.get("protocol") == "udp" else None


def _durations(listeners: Listeners) -> Family:
    family = Family("portd_connection_duration_seconds", "histogram",
                    "How long connections lasted, from accept to close")  # fmt: skip
    for listener in listeners:
        histogram = listener.get("durations")
        if histogram is None:
            continue
        cumulative = 0
        name = listener["name"]
        for bound, count in zip([*histogram["bounds"], math.inf], histogram["counts"], strict=True):
            cumulative += count
            family.add(cumulative, "_bucket", listener=name, le=_number(bound))
        family.add(cumulative, "_count", listener=name)
        family.add(histogram["sum"], "_sum", listener=name)
    return family


LISTENER_FAMILIES: tuple[Callable[[Listeners], Family], ...] = (
    _info,
    _per_listener("portd_connections_accepted", "counter",
                  "Connections accepted and handed to the handler", _tcp("total")),
    _per_listener("portd_connections_active", "gauge", "Connections open now", _tcp("active")),
    _by_reason("portd_connections_refused", "Connections refused at accept, by reason",
               "refusals", "reason", "tcp"),
    _by_reason("portd_connections_closed", "Connections that ended, by how they ended",
               "closed", "how"),
    _durations,
    _per_listener("portd_received_bytes", "counter", "Bytes received from clients",
                  lambda listener: listener.get("bytes_in", 0)),
    _per_listener("portd_sent_bytes", "counter", "Bytes sent to clients",
                  lambda listener: listener.get("bytes_out", 0)),
    _per_listener("portd_datagrams_received", "counter", "Datagrams received",
                  _udp("datagrams_in")),
    _by_reason("portd_datagrams_refused", "Datagrams dropped before the handler, by reason",
               "refusals", "reason", "udp"),
    _per_listener("portd_datagram_replies_dropped", "counter",
                  "Replies dropped (a full send buffer, an unreachable peer)",
                  _udp("datagrams_dropped")),
    _per_listener("portd_handler_failures", "counter", "Times the handler raised",
                  lambda listener: listener.get("handler_failures", 0)),
    _by_reason("portd_tls_handshake_failures", "TLS handshakes that failed, by reason",
               "tls_handshake_failed", "reason"),
)  # fmt: skip


def _event_families(listeners: Listeners) -> list[Family]:
    other = Family("portd_listener_events", "counter",
                   "Other things counted on a listener's connections, by event")  # fmt: skip
    handler = Family("portd_handler_events", "counter",
                     "What a handler counts (a forward listener's toxics), by event")  # fmt: skip
    for listener in listeners:
        name = listener["name"]
        for event, count in sorted(listener.get("events", {}).items()):
            other.add(count, "_total", listener=name, event=event)
        for event, count in sorted(listener.get("handler_events", {}).items()):
            handler.add(count, "_total", listener=name, event=event)
    return [other, handler]


def _daemon_families(snapshot: Mapping[str, Any]) -> list[Family]:
    build = Family("portd_build", "info", "The portd version serving")
    build.add(1, "_info", version=str(snapshot.get("version", "")))
    found = [build]
    workers = snapshot.get("workers")
    if workers is not None:
        live = Family("portd_workers", "gauge", "Worker processes serving now")
        live.add(sum(1 for worker in workers if worker.get("state") == "ready"))
        restarts = Family("portd_worker_restarts", "counter",
                          "Workers started again after one died")  # fmt: skip
        restarts.add(snapshot.get("worker_restarts", 0), "_total")
        found += [live, restarts]
    process = snapshot.get("process")
    if process is not None:
        found += _process_families(process)
    return found


def _process_families(process: Mapping[str, Any]) -> list[Family]:
    spec = (
        ("process_cpu_seconds", "counter", "CPU time (user and system) of the daemon's "
         "processes", "cpu_s", "_total"),
        ("process_resident_memory_bytes", "gauge", "Resident memory of the daemon's "
         "processes, added up", "rss_bytes", ""),
        ("process_open_fds", "gauge", "Open descriptors of the daemon's processes, added up",
         "open_fds", ""),
        ("process_max_fds", "gauge", "The descriptor limit of one process", "max_fds", ""),
        ("process_start_time_seconds", "gauge", "When the daemon started, in seconds since "
         "the epoch", "start_time_s", ""),
        ("portd_processes", "gauge", "Processes of this daemon (the parent and its workers)",
         "processes", ""),
    )  # fmt: skip
    found = []
    for name, kind, text, key, suffix in spec:
        if key in process:
            family = Family(name, kind, text)
            family.add(process[key], suffix)
            found.append(family)
    return found


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape(value)}"' for key, value in labels.items())
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))
