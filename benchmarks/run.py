"""Run portd side by side with socat and a minimal uvloop echo, and print medians and ratios.

Usage: ``python benchmarks/run.py [--rounds N] [--duration S] [--only NAME ...] [--json FILE]
[--baseline DIR]``

Within each round every server of a benchmark is measured once, in an order that
rotates from round to round, so slow drifts of a noisy machine touch all of them
alike. Results go to stdout as a table and to benchmarks/results/ as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from processes import become_subreaper, reap_orphans
from report import BenchmarkResult, format_table, save_results, to_json
from servers import HERE, ServerError
from suite import BenchmarkError, Measure, Settings, all_benchmarks

DEFAULT_ROUNDS = 5
DEFAULT_DURATION_S = 3.0
WARMUP_S = 0.5


def build_parser(names: list[str]) -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="default: %(default)s")
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        metavar="S",
        help=f"seconds measured per load sample, after {WARMUP_S:g} s of warm-up "
        "(default: %(default)s)",
    )
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=", ".join(names))
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON here")
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="a directory holding another portd package (git archive REV portd | tar -x -C "
        "DIR): it runs as portd-base in the same rounds of the load and memory benchmarks",
    )
    return parser


def run_benchmarks(
    results: list[BenchmarkResult], rounds: int, duration_s: float, warmup_s: float, prefix: str
) -> None:
    """Every benchmark of a runner, in a scratch directory of its own, each summarized."""
    with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
        settings = Settings(duration_s, warmup_s, Path(workdir))
        for result in results:
            run_benchmark(result, rounds, settings)
            result.finish()


def run_benchmark(result: BenchmarkResult, rounds: int, settings: Settings) -> None:
    """All rounds of one benchmark, servers interleaved; a failed sample is recorded, not fatal."""
    bench = result.benchmark
    print(f"== {bench.name}: {bench.title}", file=sys.stderr)
    try:
        with bench.session(settings) as measure:
            run_rounds(result, measure, rounds)
    except (ServerError, OSError) as exc:  # a server the whole benchmark needs did not start
        result.fail(-1, "*", str(exc))
        print(f"   FAILED to start: {exc}", file=sys.stderr)


def run_rounds(result: BenchmarkResult, measure: Measure, rounds: int) -> None:
    """Take one sample per server per round, rotating the order each round."""
    bench = result.benchmark
    for round_index in range(rounds):
        shift = round_index % len(bench.servers)
        order = bench.servers[shift:] + bench.servers[:shift]
        for server in order:
            try:
                sample = measure(server)
            except (BenchmarkError, ServerError, OSError, ValueError) as exc:
                result.fail(round_index, server, str(exc))
                print(f"   round {round_index + 1} {server}: FAILED: {exc}", file=sys.stderr)
                continue
            result.add(round_index, server, sample)
            print(
                f"   round {round_index + 1} {server}: {sample.value:,.3f} {bench.unit}",
                file=sys.stderr,
            )


def describe_machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    from importlib.metadata import version

    try:
        socat = subprocess.run(["socat", "-V"], capture_output=True, text=True, check=False)
    except OSError as exc:
        socat_version = f"not runnable: {exc.strerror}"
    else:
        lines = socat.stdout.splitlines()
        socat_version = next((line for line in lines if "socat version" in line), "?")
    return {
        "portd_commit": describe_commit(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": version("uvloop"),
        "portd": version("portd"),
        "socat": socat_version.strip(),
        "loadavg_at_start": Path("/proc/loadavg").read_text(encoding="ascii").split()[:3],
    }


def describe_commit() -> str:
    """The commit portd was measured at, with "+changes" when portd/ has local edits."""
    git = ["git", "-C", str(HERE.parent)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "portd"], capture_output=True, check=False
        )
    except OSError:
        return "?"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks, print the table, write the JSON."""
    args = build_parser([b.name for b in all_benchmarks()]).parse_args(argv)
    if args.baseline is not None and not (args.baseline / "portd" / "__init__.py").is_file():
        print(f"--baseline {args.baseline}: no portd package there", file=sys.stderr)
        return 64
    benchmarks = all_benchmarks(args.baseline.resolve() if args.baseline else None)
    selected = [b for b in benchmarks if not args.only or b.name in args.only]
    signal.signal(signal.SIGTERM, _raise_interrupt)  # clean up on SIGTERM as on Ctrl-C
    if not become_subreaper():
        print("warning: not a subreaper; socat's orphans may linger as zombies", file=sys.stderr)
    started = datetime.datetime.now(datetime.UTC)
    results: list[BenchmarkResult] = []
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="portd-bench-") as workdir:
        settings = Settings(args.duration, WARMUP_S, Path(workdir))
        try:
            for bench in selected:
                results.append(BenchmarkResult(bench))
                run_benchmark(results[-1], args.rounds, settings)
        except KeyboardInterrupt:
            interrupted = True
            print(
                "\ninterrupted: every server was stopped; partial results follow", file=sys.stderr
            )
    reap_orphans()
    for result in results:
        result.finish()
    print_report(results, args, started)
    write_json(results, args, started, interrupted)
    return 130 if interrupted else 0


def print_report(
    results: list[BenchmarkResult], args: argparse.Namespace, started: datetime.datetime
) -> None:
    """The table and the notes needed to read it."""
    print()
    print(f"portd benchmarks, {started:%Y-%m-%d %H:%M} UTC: {args.rounds} rounds, ", end="")
    print(f"{args.duration:g} s measured per load sample after {WARMUP_S:g} s warm-up; ", end="")
    print(f"portd at {describe_commit()}")
    if args.baseline is not None:
        print(f"portd-base: the portd package in {args.baseline}, in the same rounds")
    print('portd runs at log_level "warning" unless its name says otherwise (portd-info).')
    print("ratio = median/median (judged against the target); paired = median of per-round")
    print("ratios; cpu% = CPU in % of one core; srv us/op = server CPU per unit of the rate.\n")
    print(format_table(results))
    notes = [f"{r.benchmark.name}: {note}" for r in results for note in r.benchmark.notes]
    print()
    for note in notes:
        print(f"note: {note}")


def write_json(
    results: list[BenchmarkResult],
    args: argparse.Namespace,
    started: datetime.datetime,
    interrupted: bool,
) -> None:
    """Write benchmarks/results/<time>.json (and --json FILE) and say where."""
    document = {
        "started": started.isoformat(),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(),
        "interrupted": interrupted,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": WARMUP_S,
        "machine": describe_machine(),
        "baseline": str(args.baseline) if args.baseline is not None else None,
        "benchmarks": {result.benchmark.name: to_json(result) for result in results},
    }
    save_results(document, started, also=args.json)


if __name__ == "__main__":
    started_at = time.monotonic()
    code = main()
    print(f"took {time.monotonic() - started_at:.0f} s", file=sys.stderr)
    sys.exit(code)
