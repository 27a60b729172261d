"""`portd listen` against nc, socat and a minimal Python server: start-up and receiving a file.

    python benchmarks/shell.py [--rounds 5] [--starts 20] [--mib 512]

Start-up: from exec until the server accepts (each prints its port on stderr once it
listens; a connect right after must succeed). Receive: a sender streams MiB from
memory; timed from the connect until the receiver has exited with the file complete.
Output goes to tmpfs when /dev/shm exists, so the tools are measured, not the disk.
Servers are interleaved within each round; medians and ratios are printed.
Loopback only; every server binds port 0.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY_PORT = re.compile(rb"(?:listening on|Listening on|listening on AF=2) \[?[0-9.:]+\]?[ :](\d+)")
MIN_PYTHON_SERVER = """
import asyncio, sys
async def main():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print("listening on 127.0.0.1:%d" % port, file=sys.stderr, flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""
MIN_PYTHON_RECEIVER = """
import os, socket, sys
server = socket.create_server(("127.0.0.1", 0))
print("listening on 127.0.0.1:%d" % server.getsockname()[1], file=sys.stderr, flush=True)
conn, _ = server.accept()
buffer = bytearray(1 << 18)
view = memoryview(buffer)
while count := conn.recv_into(buffer):
    os.write(1, view[:count])
"""


def portd_listen() -> list[str]:
    """The installed console script, as users run it (python -m portd otherwise)."""
    script = shutil.which("portd") or str(Path(sys.executable).parent / "portd")
    if Path(script).exists():
        return [script, "listen", "127.0.0.1:0"]
    return [sys.executable, "-m", "portd", "listen", "127.0.0.1:0"]


def start_up_commands() -> dict[str, list[str]]:
    commands = {
        "portd listen": portd_listen(),
        "python asyncio": [sys.executable, "-c", MIN_PYTHON_SERVER],
    }
    if shutil.which("nc"):
        commands["nc -l"] = ["nc", "-lvn", "127.0.0.1", "0"]
    if shutil.which("socat"):
        commands["socat"] = ["socat", "-d", "-d", "TCP-LISTEN:0,bind=127.0.0.1", "STDOUT"]
    return commands


def receive_commands() -> dict[str, list[str]]:
    commands = {
        "portd listen": portd_listen(),
        "python minimal": [sys.executable, "-c", MIN_PYTHON_RECEIVER],
    }
    if shutil.which("socat"):
        listen = "TCP-LISTEN:0,bind=127.0.0.1"
        commands["socat -b 262144"] = ["socat", "-d", "-d", "-b", "262144", "-u", listen, "STDOUT"]
    if shutil.which("nc"):
        commands["nc -l"] = ["nc", "-lvn", "127.0.0.1", "0"]
    return commands


def wait_ready(proc: subprocess.Popen[bytes]) -> int:
    """Read stderr until the port appears; return it."""
    assert proc.stderr is not None
    seen = b""
    while True:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"{proc.args!r} exited before listening: {seen!r}")
        seen += line
        found = READY_PORT.search(line)
        if found:
            return int(found.group(1))


def time_start(argv: list[str]) -> float:
    """Seconds from exec to an accepted connect."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        port = wait_ready(proc)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            elapsed = time.perf_counter() - started
    finally:
        proc.kill()
        proc.wait()
    return elapsed


def time_receive(argv: list[str], directory: Path, payload: bytes, mib: int) -> float:
    """Seconds from connect until the receiver exited with ``mib`` MiB in its file."""
    out = directory / "received"
    with out.open("wb") as sink:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.PIPE)
        try:
            port = wait_ready(proc)
            started = time.perf_counter()
            with socket.create_connection(("127.0.0.1", port)) as sock:
                for _ in range(mib):
                    sock.sendall(payload)
            code = proc.wait(timeout=300)
            elapsed = time.perf_counter() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    size = out.stat().st_size
    out.unlink()
    if code != 0 or size != mib << 20:
        raise RuntimeError(f"{argv[0]}: exit {code}, {size} bytes received of {mib << 20}")
    return elapsed


def summarize(title: str, samples: dict[str, list[float]], base: str) -> None:
    """Median, min and max per server, and portd's median over each one's."""
    print(f"\n{title}")
    print(f"  {'server':<18}{'median':>10}{'min':>10}{'max':>10}  portd/this")
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for name, values in samples.items():
        ratio = "" if name == base else f"{medians[base] / medians[name]:.2f}x"
        low, high = min(values), max(values)
        print(f"  {name:<18}{medians[name]:>10.1f}{low:>10.1f}{high:>10.1f}  {ratio}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--starts", type=int, default=20, help="start-ups per server per round")
    parser.add_argument("--mib", type=int, default=512, help="MiB per received file")
    args = parser.parse_args()
    starts: dict[str, list[float]] = {name: [] for name in start_up_commands()}
    rates: dict[str, list[float]] = {name: [] for name in receive_commands()}
    payload = os.urandom(1 << 20)
    scratch = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=scratch) as directory:
        for round_number in range(1, args.rounds + 1):
            for _ in range(args.starts):
                for name, argv in start_up_commands().items():
                    starts[name].append(time_start(argv) * 1000)
            for name, argv in receive_commands().items():
                seconds = time_receive(argv, Path(directory), payload, args.mib)
                rates[name].append(args.mib * 1.048576 / seconds)
            print(f"round {round_number}/{args.rounds} done", file=sys.stderr)
    summarize("start-up, exec to accepting (ms, lower is better)", starts, "portd listen")
    summarize(f"receive {args.mib} MiB into a file (MB/s)", rates, "portd listen")
    return 0


if __name__ == "__main__":
    sys.exit(main())
