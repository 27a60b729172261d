"""Real processes for the shell and inspect tests: portd, nc and socat as users run them.

stderr (and stdout, when piped) is read in threads as it arrives, so a test waits on a
line the program prints ("listening on ...", nc's "Listening on ...") or on bytes it
relays, never on a sleep, and a chatty program never blocks on a full pipe.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support import PORTD

WAIT_S = 10.0
PORTD_LISTENING = r"^listening on .*:(\d+) \((?:tcp|udp)\)$"
NC_LISTENING = r"^(?:Listening|Bound) on \S+ (\d+)$"
SOCAT_LISTENING = r" listening on AF=\d+ \S+:(\d+)$"

Stdio = Path | int | IO[bytes] | None


def _let_children_take_ctrl_c() -> None:
    """A shell that starts pytest in the background ignores SIGINT, and children inherit
    an ignored signal: handle it here instead, so children start with the default and
    the Ctrl-C tests mean something. (exec resets handled signals to the default.)"""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Process:
    """A started program; its stderr lines and piped stdout bytes are collected as they come.

    ``stdin``/``stdout`` take a Path (opened for reading/writing), ``subprocess.PIPE``,
    ``subprocess.DEVNULL`` or an open file.
    """

    def __init__(self, argv: Sequence[str], stdin: Stdio = subprocess.DEVNULL,
                 stdout: Stdio = subprocess.PIPE, **popen: Any) -> None:  # fmt: skip
        self.argv = list(argv)
        opened: list[IO[bytes]] = []
        if isinstance(stdin, Path):
            stdin = stdin.open("rb")
            opened.append(stdin)
        if isinstance(stdout, Path):
            stdout = stdout.open("wb")
            opened.append(stdout)
        _let_children_take_ctrl_c()
        try:
            self.proc = subprocess.Popen(
                self.argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, **popen
            )
        finally:
            for file in opened:
                file.close()
        self.lines: list[str] = []
        self.output = bytearray()
        self._changed = threading.Condition()
        self._stderr_done = False
        self._stdout_done = self.proc.stdout is None
        self._threads = [threading.Thread(target=self._read_stderr, daemon=True)]
        if self.proc.stdout is not None:
            self._threads.append(threading.Thread(target=self._read_stdout, daemon=True))
        for thread in self._threads:
            thread.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._stderr_done = True
            self._changed.notify_all()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 1 << 16):
            with self._changed:
                self.output += chunk
                self._changed.notify_all()
        with self._changed:
            self._stdout_done = True
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        """Everything printed on stderr so far, one line each."""
        with self._changed:
            return "\n".join(self.lines)

    def _until(self, done: Callable[[], bool], what: str, timeout: float) -> None:
        with self._changed:
            if not self._changed.wait_for(
                lambda: done() or (self._stderr_done and self._stdout_done), timeout
            ):
                pytest.fail(f"{self.argv[:4]}: no {what} within {timeout}s; stderr:\n{self.stderr}")
            if not done():
                self.proc.wait(WAIT_S)
                pytest.fail(
                    f"{self.argv[:4]} exited {self.proc.returncode} before {what}; "
                    f"stdout {bytes(self.output)[:200]!r}; stderr:\n" + "\n".join(self.lines)
                )

    def expect(self, pattern: str, timeout: float = WAIT_S) -> re.Match[str]:
        """The first stderr line matching ``pattern`` (re.search), waiting for it if needed."""
        regex = re.compile(pattern)
        found: list[re.Match[str]] = []

        def seen() -> bool:
            found[:] = [m for line in self.lines if (m := regex.search(line))][:1]
            return bool(found)

        self._until(seen, f"stderr line matching {pattern!r}", timeout)
        return found[0]

    def expect_lines(self, pattern: str, count: int, timeout: float = WAIT_S) -> list[str]:
        """Wait until ``count`` stderr lines match ``pattern`` (re.search); return them."""
        regex = re.compile(pattern)

        def matching() -> list[str]:
            return [line for line in self.lines if regex.search(line)]

        self._until(
            lambda: len(matching()) >= count, f"{count} lines matching {pattern!r}", timeout
        )
        with self._changed:
            return matching()

    def port(self, pattern: str = PORTD_LISTENING) -> int:
        """The port a listening line announces (portd's by default, or NC_/SOCAT_LISTENING)."""
        return int(self.expect(pattern).group(1))

    def expect_output(self, size: int, timeout: float = WAIT_S) -> bytes:
        """Wait until piped stdout holds at least ``size`` bytes; return all of it."""
        self._until(lambda: len(self.output) >= size, f"{size} bytes on stdout", timeout)
        with self._changed:
            return bytes(self.output)

    def write(self, data: bytes) -> None:
        """Write to the piped stdin now."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        """End the piped stdin (the program reads EOF)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self, timeout: float = WAIT_S) -> int:
        """Wait for the exit and for every byte it printed; return the exit status."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.argv[:4]} still running after {timeout}s; stderr:\n{self.stderr}")
        for thread in self._threads:
            thread.join(WAIT_S)
        return code

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the process."""
        self.proc.send_signal(signal.SIGINT)

    def stop(self) -> None:
        """Kill it if it still runs and close the pipes (teardown, also after a failure)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT_S)
        for thread in self._threads:
            thread.join(WAIT_S)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class Spawner:
    """Starts processes for one test and stops every one of them at teardown."""

    def __init__(self) -> None:
        self.started: list[Process] = []

    def __call__(self, *argv: str, **options: Any) -> Process:
        """Start a program (argv as given)."""
        process = Process(argv, **options)
        self.started.append(process)
        return process

    def portd(self, *args: str, **options: Any) -> Process:
        """Start ``python -m portd ARGS``."""
        return self(*PORTD, *args, **options)

    def stop_all(self) -> None:
        """Stop every process this test started."""
        for process in reversed(self.started):
            process.stop()


@pytest.fixture
def spawn() -> Iterator[Spawner]:
    """Start real processes; each is killed at teardown however the test ended."""
    spawner = Spawner()
    try:
        yield spawner
    finally:
        spawner.stop_all()


def write_payload(path: Path, size: int) -> bytes:
    """Random bytes of ``size`` written to ``path``; returned for comparing."""
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def read_to_eof(sock: socket.socket) -> bytes:
    """Every byte the peer sends until it ends its side."""
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def tcp_client(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A connected TCP client with a timeout, so a test that hangs fails instead."""
    return socket.create_connection((host, port), timeout=WAIT_S)
