"""Soak round: reloads under load. Part of ``benchmarks/soak.py``, or alone:

    python benchmarks/soak_reload.py [--reloads 20]

A daemon serves http-hello ("web") and echo ("capped", max_connections_per_source = 5).
While keep-alive clients send GETs on their connections and others open a new
connection per GET, the config is rewritten and SIGHUP'd ``--reloads`` times, each time
changing web's body (so its sockets are handed over to a new listener) and capped's
idle timeout. Counted: requests answered, connections refused or reset, EOFs on a kept
connection (a client would retry them), and whether connections admitted before the
reloads still count against the cap after them (a 6th connection must be refused).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

GET = b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n"
GET_CLOSE = b"GET / HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n"
CAP = 5
REQUESTS_BETWEEN_RELOADS = 300

CONFIG = """
[daemon]
log_level = "info"
shutdown_timeout_s = 5
[[listener]]
name = "web"
bind = "127.0.0.1:{web}"
handler = "http-hello"
body = "round {round}\\n"
[[listener]]
name = "capped"
bind = "127.0.0.1:{capped}"
handler = "echo"
max_connections_per_source = {cap}
idle_timeout_s = {idle}
"""


class Counts:
    """What the clients saw, summed over threads."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.values = {"answered": 0, "refused": 0, "reset": 0, "eof_on_kept": 0, "other": 0}

    def add(self, key: str) -> None:
        with self.changed:
            self.values[key] += 1
            self.changed.notify_all()

    def wait_for_more(self, answered: int) -> None:
        """Return once ``answered`` more requests were answered (60 s at most)."""
        with self.changed:
            target = self.values["answered"] + answered
            self.changed.wait_for(lambda: self.values["answered"] >= target, 60)


def _answer(sock: socket.socket) -> bytes:
    """One response (heads here carry Content-Length; bodies are short)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError
        body += chunk
    return head


def keep_alive_client(port: int, stop: threading.Event, counts: Counts) -> None:
    sock: socket.socket | None = None
    while not stop.is_set():
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(GET)
            head = _answer(sock)
            counts.add("answered")
            if b"connection: close" in head.lower():
                sock.close()
                sock = None
        except EOFError:  # a kept connection closed between requests: clients retry
            counts.add("eof_on_kept")
            sock = _closed(sock)
        except ConnectionRefusedError:
            counts.add("refused")
            sock = _closed(sock)
        except ConnectionResetError:
            counts.add("reset")
            sock = _closed(sock)
        except OSError:
            counts.add("other")
            sock = _closed(sock)
    _closed(sock)


def new_connection_client(port: int, stop: threading.Event, counts: Counts) -> None:
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(GET_CLOSE)
                _answer(sock)
                counts.add("answered")
        except ConnectionRefusedError:
            counts.add("refused")
        except ConnectionResetError:
            counts.add("reset")
        except (OSError, EOFError):
            counts.add("other")


def _closed(sock: socket.socket | None) -> socket.socket | None:
    """Close ``sock`` if there is one; the client has no connection afterwards (None)."""
    if sock is not None:
        sock.close()
    return None


def reload_under_load(directory: Path, reloads: int) -> dict[str, Any]:
    """Run the round; returns the counts, reload timings and the cap check."""
    config = directory / "reload.toml"
    ports = _free_ports(2)  # numbers the kernel just handed out; portd binds them itself

    def write(number: int) -> None:
        text = CONFIG.format(web=ports[0], capped=ports[1], round=number, cap=CAP, idle=60 + number)
        config.write_text(text)

    write(0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "portd", "serve", "-c", str(config), "--log-format", "json"],
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    events: list[dict[str, Any]] = []
    seen = threading.Condition()
    threading.Thread(target=_read_log, args=(proc, events, seen), daemon=True).start()
    try:
        _wait_event(events, seen, "daemon_ready", 1)
        held = [socket.create_connection(("127.0.0.1", ports[1]), timeout=10) for _ in range(CAP)]
        for sock in held:  # each admitted and echoing
            sock.sendall(b"x")
            sock.recv(1)
        counts, stop = Counts(), threading.Event()
        clients = [threading.Thread(target=keep_alive_client, args=(ports[0], stop, counts))
                   for _ in range(4)]  # fmt: skip
        clients += [threading.Thread(target=new_connection_client, args=(ports[0], stop, counts))
                    for _ in range(2)]  # fmt: skip
        for thread in clients:
            thread.start()
        durations = []
        for number in range(1, reloads + 1):
            counts.wait_for_more(REQUESTS_BETWEEN_RELOADS)  # reloads spread over the load
            write(number)
            started = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            _wait_event(events, seen, "reload_complete", number)
            durations.append((time.monotonic() - started) * 1000)
        stop.set()
        for thread in clients:
            thread.join(30)
        extra_admitted = _extra_admitted(ports[1])
        for sock in held:
            sock.close()
    finally:
        proc.terminate()
        code = proc.wait(timeout=60)
    durations.sort()
    return {
        **counts.values,
        "reloads": reloads,
        "reload_median_ms": round(durations[len(durations) // 2], 1),
        "extra_admitted_past_cap": extra_admitted,
        "exit_code": code,
    }


def _extra_admitted(port: int) -> int:
    """Connections served beyond the cap held since before the reloads (must be 0)."""
    served = 0
    for _ in range(2):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"y")
                if sock.recv(1) == b"y":
                    served += 1
        except OSError:
            continue  # refused at once: the cap holds
    return served


def _free_ports(count: int) -> list[int]:
    found, holders = [], []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        holders.append(sock)
        found.append(sock.getsockname()[1])
    for sock in holders:
        sock.close()
    return found


def _read_log(proc: subprocess.Popen[str], events: list[dict[str, Any]], seen: Any) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        with seen:
            events.append(event)
            seen.notify_all()


def _wait_event(events: list[dict[str, Any]], seen: Any, name: str, count: int) -> None:
    with seen:
        if not seen.wait_for(lambda: sum(e.get("event") == name for e in events) >= count, 60):
            raise SystemExit(f"no {name} #{count} within 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        result = reload_under_load(Path(directory), args.reloads)
    print(json.dumps(result))
    ok = result["refused"] == result["reset"] == result["extra_admitted_past_cap"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
