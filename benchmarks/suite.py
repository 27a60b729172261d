"""The benchmarks: which servers each compares, how one sample is taken, and the targets.

A benchmark opens a session (starting the servers it keeps for all rounds, if any)
and then takes one sample per server per round; run.py interleaves the servers
within each round. Load comes from clients.py processes, never from this process.
The load benchmarks live in loads.py; memory and listener counts are measured here.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from loads import (
    CLIENT_GRACE_S,
    CLIENT_SCRIPT,
    CONCURRENT_CONNECTIONS,
    UDP_WINDOW,
    connections_session,
    throughput_session,
    udp_session,
)
from model import (
    Benchmark,
    BenchmarkError,
    Comparison,
    Limit,
    Measure,
    Sample,
    Session,
    Settings,
)
from processes import nofile_limit, read_line, spawn
from servers import Server, ServerError, ServerSpec, launch, portd_argv, socat_argv, start_server

# The shapes other modules import from here (model.py holds them).
__all__ = [
    "Benchmark",
    "BenchmarkError",
    "Comparison",
    "Limit",
    "Measure",
    "Sample",
    "Session",
    "Settings",
    "all_benchmarks",
]

IDLE_CONNECTIONS = 10_000
IDLE_CONNECT_CONCURRENCY = 256
IDLE_TIMEOUT_S = 120.0
NOFILE_SPARE = 256  # descriptors a server needs besides its connections
MANY_LISTENERS = 10_000
MANY_LISTENERS_TIMEOUT_S = 90.0  # far above the 1.5 s target: a slow start is a result too
DAEMON_READY = b'"event": "daemon_ready"'

PORTD = ServerSpec("portd", "portd")
PORTD_INFO = ServerSpec("portd-info", "portd", log_level="info")
# The fastest honest socat echo for each job (socat itself carries the bytes; see
# README.md for the variants measured). Bulk: 128 KiB blocks through a forked `cat`
# (PIPE deadlocks with blocks of 32 KiB and more: socat blocks writing its own full
# pipe). Short connections: PIPE, which forks no `cat`. UDP: a child per peer.
SOCAT_STREAM = ServerSpec("socat", "socat", socat_echo=("-b", "131072", "EXEC:cat"))
SOCAT_SHORT = ServerSpec("socat", "socat")
SOCAT_DATAGRAM = ServerSpec("socat", "socat", "udp")
REFERENCE = ServerSpec("reference", "reference")
# The reference accepting and adopting sockets as portd does: the floor of that design.
REFERENCE_ADOPT = ServerSpec("reference-adopt", "reference", adopt=True)
TCP_THROUGHPUT = (PORTD, SOCAT_STREAM, REFERENCE)
TCP_SHORT = (PORTD, SOCAT_SHORT, REFERENCE)
UDP_SPECS = (
    ServerSpec("portd", "portd", "udp"),
    SOCAT_DATAGRAM,
    ServerSpec("reference", "reference", "udp"),
)
# The same servers over a unix stream socket in the run's directory (socat UNIX-LISTEN
# with the echo chosen for TCP; the reference's create_unix_server); short connections
# also against reference-adopt, which accepts on its own socket as portd does.
UNIX_THROUGHPUT = tuple(
    ServerSpec(spec.name, spec.program, socat_echo=spec.socat_echo, family="unix")
    for spec in (PORTD, SOCAT_STREAM, REFERENCE)
)
UNIX_SHORT = tuple(
    replace(spec, family="unix") for spec in (PORTD, SOCAT_SHORT, REFERENCE, REFERENCE_ADOPT)
)


def memory_session(specs: tuple[ServerSpec, ...]) -> Session:
    """RSS per idle TCP connection (KiB): a fresh server for every sample."""

    @contextlib.contextmanager
    def session(settings: Settings) -> Iterator[Measure]:
        by_name = {spec.name: spec for spec in specs}

        def measure(name: str) -> Sample:
            if nofile_limit() < IDLE_CONNECTIONS + NOFILE_SPARE:
                raise BenchmarkError(f"RLIMIT_NOFILE hard limit {nofile_limit()} is too low")
            server = start_server(replace(by_name[name], many_files=True), settings.workdir)
            try:
                return _idle_rss(server)
            finally:
                server.stop()

        yield measure

    return session


def _idle_rss(server: Server) -> Sample:
    before = server.rss_kib()
    argv = [sys.executable, str(CLIENT_SCRIPT), "idle", "--port", str(server.port)]
    argv += ["--count", str(IDLE_CONNECTIONS), "--concurrency", str(IDLE_CONNECT_CONCURRENCY)]
    argv += ["--timeout", str(IDLE_TIMEOUT_S)]
    client = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready = json.loads(_read_ready(client, IDLE_TIMEOUT_S + CLIENT_GRACE_S))
        if ready["connections"] < IDLE_CONNECTIONS:
            raise BenchmarkError(
                f"only {ready['connections']} of {IDLE_CONNECTIONS} connections echoed "
                f"({ready['errors']} failed)"
            )
        server.check_alive()
        after = server.rss_kib()
    finally:
        if client.stdin is not None:
            client.stdin.close()
        try:
            client.wait(CLIENT_GRACE_S)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait()
    details = {"rss_before_kib": float(before), "rss_after_kib": float(after)}
    details["connect_s"] = float(ready["seconds"])
    return Sample((after - before) / ready["connections"], details)


def _read_ready(client: subprocess.Popen[bytes], timeout_s: float) -> bytes:
    assert client.stdout is not None
    line = read_line(client.stdout, timeout_s)
    if not line:
        if client.poll() is None:
            raise BenchmarkError(f"idle client printed nothing within {timeout_s:.0f}s")
        err = client.stderr.read().decode("utf-8", "replace") if client.stderr else ""
        raise BenchmarkError(f"idle client exited {client.returncode}: {err.strip()[-300:]}")
    return line


def write_many_listeners(path: Path, count: int) -> Path:
    """A config of ``count`` TCP echo listeners on 127.0.0.1 port 0; returns ``path``."""
    tables = [
        f'[[listener]]\nname = "echo-{index}"\nbind = "127.0.0.1:0"\nhandler = "echo"\n'
        for index in range(count)
    ]
    header = '[daemon]\nlog_level = "warning"\nshutdown_timeout_s = 1\n\n'
    path.write_text(header + "\n".join(tables), encoding="utf-8")
    return path


@contextlib.contextmanager
def listeners_session(settings: Settings) -> Iterator[Measure]:
    """Seconds from exec to ``daemon_ready`` with many listeners; ``portd check`` time."""
    config = write_many_listeners(settings.workdir / "many.toml", MANY_LISTENERS)

    def measure(name: str) -> Sample:
        return _time_check(config) if name == "portd check" else _time_serve(config)

    yield measure


def _time_serve(config: Path) -> Sample:
    spec = ServerSpec("portd serve", "portd", log_level="info", many_files=True)
    started = time.monotonic()
    server = launch(spec, portd_argv(config, "info"), [DAEMON_READY], stdout=subprocess.DEVNULL)
    try:
        ready_at = server.log.wait_for(DAEMON_READY, MANY_LISTENERS_TIMEOUT_S)
        if ready_at is None:
            server.check_alive()
            raise ServerError(f"no daemon_ready within {MANY_LISTENERS_TIMEOUT_S:.0f}s")
        return Sample(ready_at - started, {"rss_kib": float(server.rss_kib())})
    finally:
        server.stop()


def _time_check(config: Path) -> Sample:
    argv = [sys.executable, "-m", "portd", "check", str(config)]
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=MANY_LISTENERS_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # run() has killed it
        raise BenchmarkError(f"portd check ran over {MANY_LISTENERS_TIMEOUT_S:.0f}s") from exc
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise BenchmarkError(f"portd check exited {done.returncode}: {done.stderr[-300:]!r}")
    return Sample(elapsed)


def _socat_note(spec: ServerSpec) -> str:
    where = "PATH" if spec.family == "unix" else "PORT"
    return f"socat: {' '.join(socat_argv(spec, where))}"


# The benchmarks --baseline extends: their servers, and how a session is made from them.
BASELINE_SPECS = {
    "throughput": TCP_THROUGHPUT,
    "connections": TCP_SHORT,
    "udp": UDP_SPECS,
    "unix-throughput": UNIX_THROUGHPUT,
    "unix-connections": UNIX_SHORT,
    "memory": (PORTD, REFERENCE, REFERENCE_ADOPT),
}
LOAD_SESSIONS = {
    "throughput": throughput_session,
    "connections": connections_session,
    "udp": udp_session,
    "unix-throughput": throughput_session,
    "unix-connections": connections_session,
}


def _versus_peers(socat: float, reference: float) -> tuple[Comparison, ...]:
    return (Comparison("portd", "socat", socat), Comparison("portd", "reference", reference))


def with_baseline(bench: Benchmark, specs: tuple[ServerSpec, ...], baseline: Path) -> Benchmark:
    """``bench`` with ``portd-base`` (portd from the ``baseline`` tree) as one more server,
    measured in the same rounds, and the ratio portd/portd-base."""
    (portd,) = [spec for spec in specs if spec.name == "portd"]
    base = replace(portd, name="portd-base", tree=str(baseline))
    session = bench.session
    if bench.name in LOAD_SESSIONS:
        session = LOAD_SESSIONS[bench.name]((*specs, base))
    elif bench.name == "memory":
        session = memory_session((*specs, base))
    return replace(
        bench,
        servers=(*bench.servers, "portd-base"),
        session=session,
        comparisons=(*bench.comparisons, Comparison("portd", "portd-base")),
    )


def all_benchmarks(baseline: Path | None = None) -> list[Benchmark]:
    """Every benchmark in the order run.py runs them; with ``baseline``, the load and
    memory ones also run portd from that tree (``portd-base``), to tell a regression from noise."""
    benchmarks = _benchmarks()
    if baseline is None:
        return benchmarks
    return [
        with_baseline(bench, BASELINE_SPECS[bench.name], baseline)
        if bench.name in BASELINE_SPECS
        else bench
        for bench in benchmarks
    ]


def _benchmarks() -> list[Benchmark]:
    peers = ("portd", "socat", "reference")
    return [
        Benchmark(
            name="throughput",
            title="TCP echo, 1 connection, 64 KiB writes",
            unit="MB/s",
            higher_is_better=True,
            servers=peers,
            session=throughput_session(TCP_THROUGHPUT),
            comparisons=_versus_peers(5.0, 0.85),
            notes=(_socat_note(SOCAT_STREAM),),
        ),
        Benchmark(
            name="connections",
            title=f"{CONCURRENT_CONNECTIONS} concurrent short TCP connections",
            unit="conn/s",
            higher_is_better=True,
            servers=peers,
            session=connections_session(TCP_SHORT),
            comparisons=_versus_peers(4.0, 0.85),
            notes=(_socat_note(SOCAT_SHORT),),
        ),
        Benchmark(
            name="udp",
            title=f"UDP 64-byte echo, {UDP_WINDOW} outstanding",
            unit="rt/s",
            higher_is_better=True,
            servers=peers,
            session=udp_session(UDP_SPECS),
            comparisons=_versus_peers(1.1, 0.85),
            notes=(_socat_note(SOCAT_DATAGRAM),),
        ),
        Benchmark(
            name="unix-throughput",
            title="unix stream socket echo, 1 connection, 64 KiB writes",
            unit="MB/s",
            higher_is_better=True,
            servers=peers,
            session=throughput_session(UNIX_THROUGHPUT),
            comparisons=_versus_peers(2.0, 0.9),
            notes=(_socat_note(UNIX_THROUGHPUT[1]),),
        ),
        Benchmark(
            name="unix-connections",
            title=f"{CONCURRENT_CONNECTIONS} concurrent short unix stream connections",
            unit="conn/s",
            higher_is_better=True,
            servers=(*peers, "reference-adopt"),
            session=connections_session(UNIX_SHORT),
            comparisons=(*_versus_peers(2.0, 0.9), Comparison("portd", "reference-adopt")),
            notes=(_socat_note(UNIX_SHORT[1]),),
        ),
        Benchmark(
            name="memory",
            title=f"RSS per idle TCP connection ({IDLE_CONNECTIONS:,} open)",
            unit="KiB",
            higher_is_better=False,
            servers=("portd", "reference", "reference-adopt"),
            session=memory_session((PORTD, REFERENCE, REFERENCE_ADOPT)),
            comparisons=(Comparison("portd", "reference"), Comparison("portd", "reference-adopt")),
            limits=(Limit("portd", 2.0),),
        ),
        Benchmark(
            name="listeners",
            title=f"{MANY_LISTENERS:,} TCP listeners: start and check",
            unit="s",
            higher_is_better=False,
            servers=("portd serve", "portd check"),
            session=listeners_session,
            limits=(Limit("portd serve", 1.5),),
            notes=(
                "portd serve: exec to daemon_ready at log level info (daemon_ready is an info "
                f"line, so {MANY_LISTENERS:,} listener_started lines are written too)",
            ),
        ),
        Benchmark(
            name="logging",
            title="the connections benchmark at log level info vs warning",
            unit="conn/s",
            higher_is_better=True,
            servers=("portd", "portd-info"),
            session=connections_session((PORTD, PORTD_INFO)),
            comparisons=(Comparison("portd-info", "portd"),),
            notes=(
                "portd-info writes one connection_closed line per connection to a pipe "
                "that the runner drains",
            ),
        ),
    ]
