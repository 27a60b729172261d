"""portd forward beside socat, haproxy, toxiproxy, a minimal uvloop forwarder and a
direct connection, all in front of one uvloop echo.

Usage: ``python benchmarks/forward.py [--rounds N] [--duration S] [--only NAME ...] [--json FILE]``

* **fwd-throughput-1** / **fwd-throughput-8**: 64 KiB writes echoed over one (eight)
  connections through the forwarder (clients.py ``throughput``; eight processes for
  eight connections), MB/s echoed in all.
* **fwd-connections**: short connections, 8 in flight (clients.py ``connections``):
  connect through the forwarder, 64 bytes there and back, close; connections/s.
* **fwd-latency**: one connection, 1-byte ping-pong (forward_clients.py), the p50 round
  trip in us (p99 in the details); the forwarder's added latency is its p50 minus
  direct's, paired per round.
* **fwd-udp**: 64-byte datagrams, 8 outstanding, through the forwarder (clients.py
  ``udp``); round trips/s. portd, socat, minimal and direct.

Every forwarder forwards to a ``reference_echo.py`` of its own (direct talks to its
echo itself), so one peer's trouble never touches another's samples.

Within each round every forwarder is measured once, in an order that rotates from
round to round (run.py's run_benchmark); the table gives medians, median ratios and
paired ratios (the median of the per-round ratios), the steadier figure on a shared
machine. No toxics are set: this is the cost of the path itself.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from forward_peers import PEERS, start_echo, start_peer, toxiproxy_binary
from model import Benchmark, Comparison, Measure, Sample, Session, Settings
from report import BenchmarkResult, print_results, results_document, save_results
from servers import HERE, Server, ServerError

DEFAULT_ROUNDS = 5
DEFAULT_DURATION_S = 3.0
WARMUP_S = 0.5
CLIENT_TIMEOUT_S = 120.0


def run_client(script: str, *args: str) -> dict[str, float]:
    """One client process; its JSON result."""
    done = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True,
                          text=True, timeout=CLIENT_TIMEOUT_S, check=False)  # fmt: skip
    if done.returncode != 0:
        raise ServerError(f"{script} {' '.join(args)} failed: {done.stderr[-400:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_clients(count: int, script: str, *args: str) -> list[dict[str, float]]:
    """``count`` client processes at once; their results."""
    procs = [subprocess.Popen([sys.executable, str(HERE / script), *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(count)]  # fmt: skip
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=CLIENT_TIMEOUT_S)
        if proc.returncode != 0:
            raise ServerError(f"{script} failed: {err[-400:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def load(kind: str, port: int, settings: Settings) -> Sample:
    """One sample of ``kind`` against ``port``."""
    timing = ("--duration", str(settings.duration_s), "--warmup", str(settings.warmup_s))
    if kind in ("throughput-1", "throughput-8"):
        count = 1 if kind == "throughput-1" else 8
        results = run_clients(count, "clients.py", "throughput", "--port", str(port), *timing)
        return Sample(sum(r["mb_per_s"] for r in results), {"connections": count})
    if kind == "connections":
        result = run_client("clients.py", "connections", "--port", str(port),
                            "--concurrency", "8", *timing)  # fmt: skip
        return Sample(result["completed"] / result["seconds"], {"errors": result["errors"]})
    if kind == "latency":
        result = run_client("forward_clients.py", "--port", str(port), *timing)
        return Sample(result["p50_us"], {"p99_us": result["p99_us"]})
    result = run_client("clients.py", "udp", "--port", str(port), "--window", "8", *timing)
    return Sample(result["replies"] / result["seconds"], {"lost": result["lost"]})


def forward_session(kind: str, names: tuple[str, ...], transport: str = "tcp") -> Session:
    """Each forwarder started once in front of an echo of its own; one load per sample.

    uvloop 0.23's server aborts now and then ("double free or corruption") under the
    minimal forwarder's connection churn; an echo of its own per forwarder keeps such a
    crash to that forwarder, and a pair found dead before a sample is started again
    (the sample says so in ``restarted``).
    """

    @contextlib.contextmanager
    def session(settings: Settings) -> Iterator[Measure]:
        pairs: dict[str, tuple[Server, Server | None]] = {}

        def start(name: str) -> tuple[Server, Server | None]:
            echo = start_echo(transport)
            try:
                return echo, start_peer(name, transport, echo.port, settings.workdir)
            except BaseException:
                echo.stop()
                raise

        def alive(pair: tuple[Server, Server | None]) -> bool:
            return all(p is None or p.proc.poll() is None for p in pair)

        try:
            for name in names:
                pairs[name] = start(name)

            def measure(name: str) -> Sample:
                restarted = 0.0
                if not alive(pairs[name]):
                    for server in pairs[name]:
                        if server is not None:
                            server.stop()
                    pairs[name] = start(name)
                    restarted = 1.0
                echo, peer = pairs[name]
                sample = load(kind, echo.port if peer is None else peer.port, settings)
                for server in pairs[name]:
                    if server is not None:
                        server.check_alive()
                return Sample(sample.value, {**sample.details, "restarted": restarted})

            yield measure
        finally:
            for pair in pairs.values():
                for server in pair:
                    if server is not None:
                        server.stop()

    return session


def tcp_peers() -> tuple[str, ...]:
    """Every TCP forwarder this machine can run (toxiproxy only with its binary)."""
    return tuple(p for p in PEERS if p != "toxiproxy" or toxiproxy_binary())


def build_benchmarks() -> tuple[Benchmark, ...]:
    """The five forward benchmarks with the issue's targets."""
    peers = tcp_peers()
    versus = ("toxiproxy",) if "toxiproxy" in peers else ()

    def throughput(name: str, connections: int) -> Benchmark:
        return Benchmark(
            name, f"64 KiB writes echoed through the forwarder, {connections} connection(s)",
            "MB/s", True, peers, forward_session(name.removeprefix("fwd-"), peers),
            (Comparison("portd", "minimal", 0.9),
             *(Comparison("portd", v, 2.0) for v in versus),
             Comparison("portd", "socat"), Comparison("portd", "haproxy"),
             Comparison("portd", "direct")),
        )  # fmt: skip

    return (
        throughput("fwd-throughput-1", 1),
        throughput("fwd-throughput-8", 8),
        Benchmark("fwd-connections", "short connections through the forwarder, 8 in flight",
                  "conn/s", True, peers, forward_session("connections", peers),
                  (*(Comparison("portd", v, 1.5) for v in versus),
                   Comparison("portd", "haproxy", 0.8), Comparison("portd", "socat"),
                   Comparison("portd", "minimal"))),
        Benchmark("fwd-latency", "1-byte ping-pong round trip, p50", "us", False, peers,
                  forward_session("latency", peers),
                  (Comparison("portd", "direct"), Comparison("portd", "minimal"),
                   Comparison("portd", "haproxy"), Comparison("portd", "socat"),
                   *(Comparison("portd", v) for v in versus))),
        Benchmark("fwd-udp", "64-byte datagrams through the forwarder, 8 outstanding",
                  "rt/s", True, ("direct", "portd", "minimal", "socat"),
                  forward_session("udp", ("direct", "portd", "minimal", "socat"), "udp"),
                  (Comparison("portd", "socat", 1.5), Comparison("portd", "minimal"))),
    )  # fmt: skip


def added_latency(result: BenchmarkResult) -> dict[str, dict[str, float]]:
    """Each forwarder's p50 minus direct's, paired per round: median and spread."""
    by_round = result.round_values()
    direct = by_round.get("direct", {})
    added: dict[str, dict[str, float]] = {}
    for server, rounds in by_round.items():
        deltas = [value - direct[r] for r, value in rounds.items() if r in direct]
        if server != "direct" and deltas:
            added[server] = {"median_us": statistics.median(deltas),
                             "min_us": min(deltas), "max_us": max(deltas)}  # fmt: skip
    return added


LIMIT_ADDED_P50_US = 100.0  # toxiproxy's own claim for its added latency


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the table and the added latency, write the JSON."""
    benches = build_benchmarks()
    args = _parser([b.name for b in benches]).parse_args(argv)
    from run import run_benchmarks

    chosen = [b for b in benches if not args.only or b.name in args.only]
    results = [BenchmarkResult(bench) for bench in chosen]
    started = datetime.datetime.now(datetime.UTC)
    run_benchmarks(results, args.rounds, args.duration, WARMUP_S, "portd-bench-forward-")
    print_results("forward", started, args.rounds, results)
    document = results_document(started, results)
    for result in results:
        if result.benchmark.name == "fwd-latency":
            added = added_latency(result)
            document["added_latency_us"] = added
            print("\nadded p50 latency (forwarder p50 - direct p50, paired per round):")
            for server, figures in sorted(added.items()):
                verdict = "ok" if figures["median_us"] <= LIMIT_ADDED_P50_US else "MISSED"
                print(f"  {server:10s} {figures['median_us']:8.1f} us (rounds "
                      f"{figures['min_us']:.1f}..{figures['max_us']:.1f})"
                      + (f"  target <= {LIMIT_ADDED_P50_US:g}: {verdict}"
                         if server == "portd" else ""))  # fmt: skip
    save_results(document, started, "forward", args.json)
    return 0


def _parser(names: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="default: %(default)s")
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        metavar="S",
        help="seconds per sample, after the warm-up (default: %(default)s)",
    )
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON here")
    return parser


if __name__ == "__main__":
    sys.exit(main())
