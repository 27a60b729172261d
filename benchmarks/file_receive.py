"""file-receive against ``nc -l > file`` and ``dd conv=fsync``: one file over loopback to disk.

Usage: ``python benchmarks/file_receive.py [--rounds N] [--size-mib N] [--dir DIR] [--json FILE]``

Each sample moves the same bytes (random, generated once, read from the page cache):

* **portd**: a sender process connects to a file-receive listener, sends the file with
  sendfile(), half-closes and waits for portd's close, which portd sends only after
  the ``file_received`` line: file fsynced, linked under its final name, directory
  fsynced. The line's byte count and sha256 are checked against the source.
* **nc**: ``nc -l 127.0.0.1 0 > FILE`` (the port read back from ``-v``), the same
  sender, timed until nc closes at EOF. nc never fsyncs: its bytes may still be only in
  the page cache when it exits.
* **dd**: ``dd if=SOURCE of=FILE bs=1M conv=fsync``: the disk's own limit for those
  bytes, with no network in the way.

MB/s = 10^6 bytes per second. Rounds interleave the three, rotating the order; after
every sample the output is removed and ``sync`` runs outside the timed window (on a
file system mounted with ``discard`` the freed blocks are trimmed then, not during
the next sample). Also importable: FILE_RECEIVE is a Benchmark for suite.py.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from report import BenchmarkResult, format_table, save_results, to_json
from servers import HOST, Server, ServerError, ServerSpec, launch, portd_argv, spawn
from suite import Benchmark, BenchmarkError, Comparison, Measure, Sample, Settings

DEFAULT_SIZE_MIB = 1024
DEFAULT_DIR = Path("/var/tmp")  # on disk: /tmp may be a tmpfs
DEFAULT_ROUNDS = 5
SAMPLE_TIMEOUT_S = 120.0
READY_TIMEOUT_S = 20.0
BLOCK_BYTES = 1 << 20
PORTD = ServerSpec("portd", "portd", log_level="info")


def send_file(port: int, path: Path) -> dict[str, float]:
    """The sender: sendfile ``path``, half-close, wait for the server's close.

    Returns:
        ``seconds`` from connect to the server's close, and this process's ``cpu_s``.
    """
    with path.open("rb") as source, socket.create_connection((HOST, port)) as sock:
        started = time.monotonic()
        sock.sendfile(source)
        sock.shutdown(socket.SHUT_WR)
        if sock.recv(1) != b"":
            raise SystemExit("the server sent data")
        seconds = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime}


def run_sender(port: int, source: Path) -> dict[str, float]:
    """Run send_file in its own process (off the runner's GIL); its JSON result."""
    argv = [sys.executable, str(Path(__file__).resolve()), "send", str(port), str(source)]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=SAMPLE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"sender ran over {SAMPLE_TIMEOUT_S:.0f}s") from exc
    if done.returncode != 0:
        raise BenchmarkError(f"sender exited {done.returncode}: {done.stderr[-300:]!r}")
    result: dict[str, float] = json.loads(done.stdout)
    return result


def write_source(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path`` (left in the page cache); their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for offset in range(0, size, BLOCK_BYTES):
            block = os.urandom(min(BLOCK_BYTES, size - offset))
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def write_config(path: Path, directory: Path) -> Path:
    """One file-receive listener on 127.0.0.1 port 0 into ``directory``."""
    path.write_text(
        "[daemon]\nshutdown_timeout_s = 1\n\n[[listener]]\n"
        f'name = "in"\nbind = "{HOST}:0"\nhandler = "file-receive"\n'
        f'directory = "{directory}"\nmin_free_bytes = 0\n',
        encoding="utf-8",
    )
    return path


def log_events(server: Server, event: str) -> list[dict[str, Any]]:
    """The ``event`` lines among the last ones portd logged."""
    found = []
    for line in list(server.log.lines):
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == event:
                found.append(entry)
    return found


def wait_for_event(server: Server, event: str, seen: set[int] | None = None) -> dict[str, Any]:
    """The first ``event`` line whose conn_id is not in ``seen`` (then added), polled from
    the drained log: the reader thread may be a line behind when the sender returns."""
    seen = set() if seen is None else seen
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        for entry in log_events(server, event):
            if entry.get("conn_id") not in seen:
                seen.add(entry.get("conn_id", 0))
                return entry
        server.check_alive()
        if time.monotonic() > deadline:
            raise BenchmarkError(f"portd logged no {event} within {READY_TIMEOUT_S:.0f}s")
        time.sleep(0.01)


class FileReceiveRun:
    """The session's state: source file, output directory, the portd server."""

    def __init__(self, work: Path, size: int, settings: Settings, server_starter: Any) -> None:
        self.work = work
        self.size = size
        self.source = work / "source"
        self.digest = write_source(self.source, size)
        self.incoming = work / "incoming"
        self.output = work / "output"
        config = write_config(settings.workdir / "file-receive.toml", self.incoming)
        self.server: Server = server_starter(config)
        self.port = int(wait_for_event(self.server, "listener_started")["port"])
        self.received: set[int] = set()  # conn_ids of the file_received lines read

    def measure(self, name: str) -> Sample:
        """One sample of ``name``; the output is removed and synced afterwards."""
        samplers: dict[str, Callable[[], Sample]] = {
            "portd": self.sample_portd, "nc": self.sample_nc, "dd": self.sample_dd,
        }  # fmt: skip
        try:
            return samplers[name]()
        finally:
            self.clear()

    def sample_portd(self) -> Sample:
        cpu_before = self.server.cpu_s()
        sent = run_sender(self.port, self.source)
        line = wait_for_event(self.server, "file_received", self.received)
        if (line["bytes"], line["sha256"]) != (self.size, self.digest):
            raise BenchmarkError(f"portd stored {line['bytes']} bytes, sha256 {line['sha256']}")
        cpu_s = self.server.cpu_s() - cpu_before
        return self._sample(sent, server_cpu_s=cpu_s)

    def sample_nc(self) -> Sample:
        with self.output.open("wb") as out:
            nc = spawn(["nc", "-v", "-l", HOST, "0"], stdin=subprocess.DEVNULL, stdout=out,
                       stderr=subprocess.PIPE)  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            port = _nc_port(nc)
            sent = run_sender(port, self.source)
            nc.wait(SAMPLE_TIMEOUT_S)
        finally:
            if nc.poll() is None:
                nc.kill()
                nc.wait()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        children_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if self.output.stat().st_size != self.size:
            raise BenchmarkError(f"nc wrote {self.output.stat().st_size} bytes")
        return self._sample(sent, server_cpu_s=children_s - sent["cpu_s"])

    def sample_dd(self) -> Sample:
        argv = ["dd", f"if={self.source}", f"of={self.output}", "bs=1M", "conv=fsync"]
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, timeout=SAMPLE_TIMEOUT_S, check=False)
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise BenchmarkError(f"dd exited {done.returncode}: {done.stderr[-300:]!r}")
        return self._sample({"seconds": seconds})

    def _sample(self, sent: dict[str, float], server_cpu_s: float | None = None) -> Sample:
        seconds = sent["seconds"]
        details = {"seconds": seconds}
        if server_cpu_s is not None:
            details["server_cpu_pct"] = 100 * server_cpu_s / seconds
        if "cpu_s" in sent:
            details["client_cpu_pct"] = 100 * sent["cpu_s"] / seconds
        return Sample(self.size / seconds / 1e6, details)

    def clear(self) -> None:
        """Remove every output, then sync so the next sample starts from a quiet disk."""
        self.output.unlink(missing_ok=True)
        if self.incoming.is_dir():
            for path in self.incoming.iterdir():
                path.unlink()
        os.sync()


def _nc_port(nc: subprocess.Popen[bytes]) -> int:
    """The port nc reports with -v ("Listening on localhost 40000"): it listens then."""
    assert nc.stderr is not None
    if not select.select([nc.stderr], [], [], READY_TIMEOUT_S)[0]:
        raise BenchmarkError("nc printed no 'Listening on' line")
    line = nc.stderr.readline().decode("utf-8", "replace")
    if not line.startswith("Listening on"):
        raise BenchmarkError(f"nc said {line.strip()!r}")
    return int(line.split()[-1])


def _start_portd(config: Path) -> Server:
    return launch(PORTD, portd_argv(config, "info"))


def file_receive_session(size: int, directory: Path = DEFAULT_DIR) -> Any:
    """A suite.Session: the source and outputs live in a new directory under ``directory``."""

    @contextlib.contextmanager
    def session(settings: Settings) -> Iterator[Measure]:
        work = Path(tempfile.mkdtemp(prefix="portd-bench-file-receive-", dir=directory))
        try:
            run = FileReceiveRun(work, size, settings, _start_portd)
            try:
                yield run.measure
            finally:
                run.server.stop()
        finally:
            shutil.rmtree(work)

    return session


def file_receive_benchmark(
    size: int = DEFAULT_SIZE_MIB << 20, directory: Path = DEFAULT_DIR
) -> Benchmark:
    """The benchmark as suite.py and run.py see it."""
    return Benchmark(
        name="file-receive",
        title=f"{size >> 20} MiB over loopback into a durable file",
        unit="MB/s",
        higher_is_better=True,
        servers=("portd", "nc", "dd"),
        session=file_receive_session(size, directory),
        comparisons=(Comparison("portd", "nc", 1.5), Comparison("portd", "dd", 0.8)),
        notes=(
            "portd: timed until the sender sees the close that follows file_received "
            "(fsynced, linked, directory fsynced); nc: until nc closes, never fsynced; "
            "dd: bs=1M conv=fsync from the page cache",
            "srv cpu% for nc is nc's own CPU; dd has none recorded",
        ),
    )


FILE_RECEIVE = file_receive_benchmark()


def main(argv: list[str] | None = None) -> int:
    """Run the rounds, print the table, write the JSON."""
    args = _parser().parse_args(argv)
    if args.command == "send":
        print(json.dumps(send_file(args.port, args.path)))
        return 0
    from run import run_benchmark

    bench = file_receive_benchmark(args.size_mib << 20, args.dir)
    result = BenchmarkResult(bench)
    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="portd-bench-") as workdir:
        try:
            run_benchmark(result, args.rounds, Settings(0.0, 0.0, Path(workdir)))
        except ServerError as exc:
            print(f"portd failed: {exc}", file=sys.stderr)
            return 1
    result.finish()
    print(f"\nportd file-receive benchmark, {started:%Y-%m-%d %H:%M} UTC: {args.rounds} rounds")
    print("ratio = median / median; cpu% = CPU in % of one core over the sample.\n")
    print(format_table([result]))
    for note in bench.notes:
        print(f"note: {note}")
    document = {"started": started.isoformat(), "benchmarks": {bench.name: to_json(result)}}
    save_results(document, started, "file-receive", args.json)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    send = commands.add_parser("send", help="(internal) the sender process")
    send.add_argument("port", type=int)
    send.add_argument("path", type=Path)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="default: %(default)s")
    parser.add_argument(
        "--size-mib", type=int, default=DEFAULT_SIZE_MIB, help="default: %(default)s"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help="on the disk to measure (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON here")
    return parser


if __name__ == "__main__":
    sys.exit(main())
