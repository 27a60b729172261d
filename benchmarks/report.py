"""From samples to verdicts: medians, ratios of medians, targets, and the printed table."""

from __future__ import annotations

import dataclasses
import datetime
import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model import Benchmark, Sample

RESULTS_DIR = Path(__file__).resolve().parent / "results"

SUMMARY_HEADER = ("benchmark", "server", "median", "min", "max", "unit", "n")
VERDICT_HEADER = ("ratio", "value", "paired", "target", "result")
# Sample details shown as columns: key, heading. See README.md for their meaning.
DETAIL_COLUMNS = (
    ("server_cpu_pct", "srv cpu%"),
    ("server_cpu_us_per_op", "srv us/op"),
    ("client_cpu_pct", "cli cpu%"),
    ("p99_ms", "p99 ms"),
    ("balance", "balance"),
)


@dataclass(frozen=True, slots=True)
class Summary:
    """One server's samples in one benchmark."""

    median: float
    low: float
    high: float
    count: int
    errors: int
    details: dict[str, float]  # the median of each detail


@dataclass(frozen=True, slots=True)
class Verdict:
    """A ratio or an absolute value checked against its target."""

    server: str  # the row it is printed on
    label: str  # "portd/socat", or "median" for an absolute limit
    value: float | None
    target: str  # "" when there is none
    passed: bool | None  # None: no target, or nothing measured
    paired: float | None = None  # median of the per-round ratios (comparisons only)


@dataclass(slots=True)
class BenchmarkResult:
    """Everything one benchmark produced; ``finish`` fills the summaries and verdicts."""

    benchmark: Benchmark
    samples: dict[str, list[tuple[int, Sample]]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    summaries: dict[str, Summary | None] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)

    def add(self, round_index: int, server: str, sample: Sample) -> None:
        """Record one sample."""
        self.samples.setdefault(server, []).append((round_index, sample))

    def fail(self, round_index: int, server: str, error: str) -> None:
        """Record a sample that could not be taken."""
        self.errors.append({"round": round_index, "server": server, "error": error})

    def finish(self) -> None:
        """Summarize each server and judge the comparisons and limits."""
        for server in self.benchmark.servers:
            failed = sum(1 for error in self.errors if error["server"] in (server, "*"))
            taken = [sample for _, sample in self.samples.get(server, [])]
            self.summaries[server] = summarize(taken, failed)
        self.verdicts = judge(self.benchmark, self.summaries, self.round_values())

    def round_values(self) -> dict[str, dict[int, float]]:
        """Each server's value by round."""
        return {
            server: {round_index: sample.value for round_index, sample in samples}
            for server, samples in self.samples.items()
        }


def summarize(samples: list[Sample], errors: int) -> Summary | None:
    """Median, min and max of the values; None if there are none."""
    if not samples:
        return None
    values = [sample.value for sample in samples]
    keys = sorted({key for sample in samples for key in sample.details})
    details = {
        key: statistics.median(s.details[key] for s in samples if key in s.details) for key in keys
    }
    return Summary(
        statistics.median(values), min(values), max(values), len(values), errors, details
    )


def judge(
    bench: Benchmark,
    summaries: dict[str, Summary | None],
    by_round: dict[str, dict[int, float]],
) -> list[Verdict]:
    """Every comparison and limit of ``bench``, evaluated on the medians."""
    verdicts = []
    sign = ">=" if bench.higher_is_better else "<="
    for comparison in bench.comparisons:
        top, bottom = summaries.get(comparison.numerator), summaries.get(comparison.denominator)
        ratio = top.median / bottom.median if top and bottom and bottom.median else None
        paired = paired_ratio(
            by_round.get(comparison.numerator, {}), by_round.get(comparison.denominator, {})
        )
        label = f"{comparison.numerator}/{comparison.denominator}"
        row = comparison.denominator if comparison.numerator == "portd" else comparison.numerator
        target, passed = "", None
        if comparison.target is not None:
            target = f"{sign} {comparison.target:g}x"
            passed = None if ratio is None else _meets(ratio, comparison.target, bench)
        verdicts.append(Verdict(row, label, ratio, target, passed, paired))
    for limit in bench.limits:
        summary = summaries.get(limit.server)
        value = summary.median if summary else None
        passed = None if value is None else _meets(value, limit.target, bench)
        target = f"{sign} {limit.target:g} {bench.unit}"
        verdicts.append(Verdict(limit.server, "median", value, target, passed))
    return verdicts


def paired_ratio(top: dict[int, float], bottom: dict[int, float]) -> float | None:
    """The median over rounds of top/bottom, from samples taken seconds apart: steadier
    than the ratio of medians when the machine's load drifts between rounds."""
    ratios = [top[r] / bottom[r] for r in top.keys() & bottom.keys() if bottom[r]]
    return statistics.median(ratios) if ratios else None


def _meets(value: float, target: float, bench: Benchmark) -> bool:
    return value >= target if bench.higher_is_better else value <= target


def format_table(results: list[BenchmarkResult]) -> str:
    """The readable table: one line per server, then one per extra verdict on that server."""
    header = (*SUMMARY_HEADER, *(title for _, title in DETAIL_COLUMNS), *VERDICT_HEADER)
    rows: list[tuple[str, ...]] = [header]
    for result in results:
        bench = result.benchmark
        for server in bench.servers:
            mine: list[Verdict | None] = [v for v in result.verdicts if v.server == server]
            mine = mine or [None]
            for index, verdict in enumerate(mine):
                if index == 0:
                    left = _summary_cells(bench, server, result.summaries.get(server))
                else:
                    left = ("",) * (len(SUMMARY_HEADER) + len(DETAIL_COLUMNS))
                rows.append((*left, *_verdict_cells(verdict)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    left_aligned = {0, 1, 5, len(header) - 5, len(header) - 2, len(header) - 1}
    lines = [
        "  ".join(
            cell.ljust(width) if i in left_aligned else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _summary_cells(bench: Benchmark, server: str, summary: Summary | None) -> tuple[str, ...]:
    if summary is None:
        return (bench.name, server, "failed", "", "", bench.unit, "0", *("",) * len(DETAIL_COLUMNS))
    count = f"{summary.count}" + (f" ({summary.errors} failed)" if summary.errors else "")
    cpu = [summary.details.get(key) for key, _ in DETAIL_COLUMNS]
    return (
        bench.name,
        server,
        format_number(summary.median),
        format_number(summary.low),
        format_number(summary.high),
        bench.unit,
        count,
        *("" if value is None else format_number(value) for value in cpu),
    )


def _verdict_cells(verdict: Verdict | None) -> tuple[str, ...]:
    if verdict is None:
        return ("",) * len(VERDICT_HEADER)
    if verdict.value is None:
        value = "n/a"
    elif verdict.label == "median":
        value = format_number(verdict.value)
    else:
        value = f"{verdict.value:.2f}x"
    paired = "" if verdict.paired is None else f"{verdict.paired:.2f}x"
    result = {True: "PASS", False: "FAIL", None: ""}[verdict.passed]
    return (verdict.label, value, paired, verdict.target, result)


def format_number(value: float) -> str:
    """Three significant figures at least, no exponent, thousands separated."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) >= 1 else f"{value:.3f}"


def to_json(result: BenchmarkResult) -> dict[str, Any]:
    """One benchmark's result as plain data for the JSON file."""
    bench = result.benchmark
    return {
        "title": bench.title,
        "unit": bench.unit,
        "higher_is_better": bench.higher_is_better,
        "notes": list(bench.notes),
        "samples": {
            server: [{"round": r, "value": s.value, **s.details} for r, s in samples]
            for server, samples in result.samples.items()
        },
        "errors": result.errors,
        "summaries": {
            server: None if summary is None else dataclasses.asdict(summary)
            for server, summary in result.summaries.items()
        },
        "verdicts": [dataclasses.asdict(verdict) for verdict in result.verdicts],
    }


RATIO_LEGEND = "ratio = median / median; paired = median of the per-round ratios.\n"


def print_results(
    title: str,
    started: datetime.datetime,
    rounds: int,
    results: list[BenchmarkResult],
    *,
    notes: Iterable[str] = (),
    heading_extra: str = "",
) -> None:
    """The heading, the legend, the table and the notes of one runner's results."""
    print(
        f"\nportd {title} benchmarks, {started:%Y-%m-%d %H:%M} UTC: {rounds} rounds{heading_extra}"
    )
    print(RATIO_LEGEND)
    print(format_table(results))
    for note in notes:
        print(f"note: {note}")


def results_document(
    started: datetime.datetime, results: list[BenchmarkResult], **extra: Any
) -> dict[str, Any]:
    """What save_results writes: the start, anything ``extra``, every benchmark's figures."""
    return {
        "started": started.isoformat(),
        **extra,
        "benchmarks": {result.benchmark.name: to_json(result) for result in results},
    }


def save_results(
    document: dict[str, Any], started: datetime.datetime, suffix: str = "", also: Path | None = None
) -> list[Path]:
    """Write ``document`` as JSON under benchmarks/results/ (and to ``also``); print where."""
    name = f"{started:%Y%m%dT%H%M%SZ}{'-' + suffix if suffix else ''}.json"
    paths = [RESULTS_DIR / name, *([also] if also else [])]
    text = json.dumps(document, indent=2) + "\n"
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    print(f"\nresults: {', '.join(str(path) for path in paths)}")
    return paths
