"""SIGHUP reloads as a real process: kept sockets, handed-over sockets, removed listeners
draining, bad configs ignored, and no refused or reset connection under load."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from portd.handlers.echo import EchoHandler
from portd.listeners import Listener
from portd.reload import plan_reload
from tests.support import Daemon, listener_config

StartDaemon = Callable[..., Daemon]


def listeners(*specs: tuple[str, str] | tuple[str, str, int]) -> str:
    text = ""
    for name, bind, *backlog in specs:
        text += f'[[listener]]\nname = "{name}"\nbind = "{bind}"\nhandler = "echo"\n'
        if backlog:
            text += f"backlog = {backlog[0]}\n"
    return text


def config_path(daemon: Daemon) -> Path:
    return Path(daemon.args[daemon.args.index("-c") + 1])


def reload(daemon: Daemon, text: str) -> dict[str, Any]:
    """Rewrite the config, send SIGHUP, return the next reload_complete event."""
    config_path(daemon).write_text(text)
    daemon.signal(signal.SIGHUP)
    return daemon.wait_for("reload_complete")


def echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(len(data) - len(received))
        if not chunk:
            break
        received += chunk
    return received


def started_events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [
        e for e in daemon.events if e.get("event") == "listener_started" and e["listener"] == name
    ]


def test_added_listener_serves_and_unchanged_one_keeps_its_connections(
    start_daemon: StartDaemon,
) -> None:
    daemon = start_daemon(listeners(("steady", "127.0.0.1:0")))
    ports = daemon.ready()
    with socket.create_connection(("127.0.0.1", ports["steady"]), timeout=10) as live:
        assert echo(live, b"before") == b"before"
        done = reload(daemon, listeners(("steady", "127.0.0.1:0"), ("extra", "127.0.0.1:0")))
        assert (done["unchanged"], done["changed"], done["added"], done["removed"]) == (1, 0, 1, 0)
        assert echo(live, b"after") == b"after"
    extra = started_events(daemon, "extra")[0]["port"]
    with socket.create_connection(("127.0.0.1", extra), timeout=10) as sock:
        assert echo(sock, b"new") == b"new"
    assert len(started_events(daemon, "steady")) == 1  # never restarted


def test_removed_listener_refuses_new_clients_and_finishes_live_ones(
    start_daemon: StartDaemon,
) -> None:
    daemon = start_daemon(listeners(("keep", "127.0.0.1:0"), ("gone", "127.0.0.1:0")))
    ports = daemon.ready()
    with socket.create_connection(("127.0.0.1", ports["gone"]), timeout=10) as live:
        assert echo(live, b"1") == b"1"
        done = reload(daemon, listeners(("keep", "127.0.0.1:0")))
        assert (done["unchanged"], done["changed"], done["added"], done["removed"]) == (1, 0, 0, 1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", ports["gone"]), timeout=5)
        assert echo(live, b"still here") == b"still here"
    assert daemon.wait_for("listener_stopped")["listener"] == "gone"


def test_changed_options_take_over_the_same_socket(start_daemon: StartDaemon) -> None:
    """Port 0 with the same name and bind keeps the kernel's port across a change."""
    daemon = start_daemon(listeners(("web", "127.0.0.1:0", 128)))
    port = daemon.ready()["web"]
    done = reload(daemon, listeners(("web", "127.0.0.1:0", 256)))
    assert (done["unchanged"], done["changed"], done["added"], done["removed"]) == (0, 1, 0, 0)
    assert (done["sockets_handed_over"], done["sockets_bound"]) == (1, 0)
    second = started_events(daemon, "web")[1]
    assert (second["port"], second["origin"]) == (port, "reused")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert echo(sock, b"x") == b"x"


def test_an_invalid_config_is_logged_in_one_line_and_the_old_one_keeps_serving(
    start_daemon: StartDaemon,
) -> None:
    daemon = start_daemon(listeners(("e", "127.0.0.1:0")))
    port = daemon.ready()["e"]
    config_path(daemon).write_text(listeners(("e", "127.0.0.1:0")) + "backlog = 0\nbogus = 1\n")
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_for("reload_failed")
    assert "\n" not in failed["error"]
    assert "backlog = 0: expected an integer from 1 to 65535" in failed["error"]
    assert "bogus = 1: unknown key" in failed["error"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert echo(sock, b"ok") == b"ok"


HOSTILE_CONFIGS = {
    "deep-nesting": ("x = " + "[" * 600 + "]" * 600 + "\n", "nested too deeply"),
    "nul-in-bind": ('[[listener]]\nname = "e"\nbind = "a\\u0000b:0"\nhandler = "echo"\n',
                    "control character"),
    "5000-digit-integer": (listeners(("e", "127.0.0.1:0")) + "backlog = " + "1" * 5000 + "\n",
                           "TOML value cannot be read"),
    "not-utf8": (b"\xff\xfe".decode("latin-1"), "not UTF-8"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE_CONFIGS))
def test_a_config_failing_outside_portds_checks_is_a_reload_failure_not_an_exit(
    start_daemon: StartDaemon, case: str
) -> None:
    """Reading or parsing that fails in the TOML reader or the resolver keeps serving."""
    text, reason = HOSTILE_CONFIGS[case]
    daemon = start_daemon(listeners(("e", "127.0.0.1:0")))
    port = daemon.ready()["e"]
    config_path(daemon).write_bytes(text.encode("latin-1" if case == "not-utf8" else "utf-8"))
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_for("reload_failed")
    assert reason in failed["error"], failed
    assert "exception" not in failed  # an expected failure: one line, no traceback
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert echo(sock, b"ok") == b"ok"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_config_replaced_by_something_not_a_file_is_refused_without_blocking(
    start_daemon: StartDaemon, kind: str
) -> None:
    """A FIFO would block the read for ever and /dev/zero would fill memory: refused."""
    daemon = start_daemon(listeners(("e", "127.0.0.1:0")))
    port = daemon.ready()["e"]
    path = config_path(daemon)
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_for("reload_failed")
    kind = {"fifo": "a FIFO", "directory": "a directory", "device": "a character device"}[kind]
    assert failed["error"].endswith(f"cannot read config: {kind}, not a regular file")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert echo(sock, b"ok") == b"ok"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_a_handler_module_that_cannot_be_imported_is_a_reload_failure(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """A plugin whose import raises (or that the dropped user cannot read) fails the reload."""
    plugin = tmp_path / "plugin"
    (plugin / "broken_handler").mkdir(parents=True)
    (plugin / "broken_handler" / "__init__.py").write_text("raise PermissionError(13, 'denied')\n")
    dist = plugin / "broken_handler-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-handler\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[portd.handlers]\nbroken = broken_handler:Broken\n")
    env = {**os.environ, "PYTHONPATH": str(plugin)}
    daemon = start_daemon(listeners(("e", "127.0.0.1:0")), env=env)
    port = daemon.ready()["e"]
    config_path(daemon).write_text(
        listeners(("e", "127.0.0.1:0")) + '[[listener]]\nbind = "127.0.0.1:0"\nhandler = "broken"\n'
    )
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_for("reload_failed")
    assert (
        "handler 'broken': cannot import broken_handler:Broken: PermissionError: denied"
        in (failed["error"])
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert echo(sock, b"ok") == b"ok"


def test_a_sighup_while_binding_is_held_and_applied_once_serving(tmp_path: Path) -> None:
    """SIGHUP's default action kills: until the loop listens for it, portd holds it.

    2,000 listeners keep the daemon binding long enough to send SIGHUP once it handles the
    signal (SigCgt in /proc) and before it holds a single socket.
    """
    path = tmp_path / "portd.toml"
    path.write_text(listeners(*((f"l{i}", "127.0.0.1:0") for i in range(2000))))
    daemon = Daemon(["-c", str(path)])
    try:
        pid = daemon.proc.pid
        deadline = time.monotonic() + 10
        while not _handles_sighup(pid):
            assert time.monotonic() < deadline, "portd never handled SIGHUP"
            assert daemon.proc.poll() is None, daemon.lines
        sockets_then = _socket_count(pid)
        daemon.signal(signal.SIGHUP)
        assert sockets_then < 2000  # sent while still starting, before every listener bound
        daemon.wait_for("daemon_ready")
        done = daemon.wait_for("reload_complete")
        assert done["unchanged"] == 2000
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0
    finally:
        daemon.stop()


def _handles_sighup(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    return False


def _socket_count(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += fd.readlink().name.startswith("socket:")
        except OSError:
            continue
    return count


def test_a_reload_that_cannot_bind_everything_changes_nothing(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(listeners(("e", "127.0.0.1:0")))
    port = daemon.ready()["e"]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        config_path(daemon).write_text(
            listeners(("new", "127.0.0.1:0"), ("clash", f"127.0.0.1:{busy}"))
        )
        daemon.signal(signal.SIGHUP)
        failed = daemon.wait_for("reload_failed")
    assert failed["error"].startswith(f'listener "clash": 127.0.0.1:{busy} (tcp) is already in use')
    assert not started_events(daemon, "new")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert echo(sock, b"old config") == b"old config"


class Load:
    """200 open connections echoing in turn, plus new connections at ~500/s."""

    def __init__(self, port: int, open_count: int = 200, new_per_s: float = 500) -> None:
        self.port = port
        self.errors: list[str] = []
        self.opened = 0
        self.progress = threading.Condition()
        self.stop = threading.Event()
        self.open = [
            socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(open_count)
        ]
        self.new_interval_s = 1 / new_per_s
        self.threads = [
            threading.Thread(target=self._churn, daemon=True),
            threading.Thread(target=self._ping_open, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _churn(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    if echo(sock, b"n") != b"n":
                        self.errors.append("new connection: short echo")
                with self.progress:
                    self.opened += 1
                    self.progress.notify_all()
            except OSError as exc:
                self.errors.append(f"new connection: {exc!r}")
            next_at += self.new_interval_s
            time.sleep(max(0.0, next_at - time.monotonic()))  # pacing, not readiness

    def _ping_open(self) -> None:
        while not self.stop.is_set():
            for sock in self.open:
                try:
                    if echo(sock, b"o") != b"o":
                        self.errors.append("open connection: short echo")
                except OSError as exc:
                    self.errors.append(f"open connection: {exc!r}")

    def wait_for_new(self, count: int) -> None:
        """Block until ``count`` more new connections went through."""
        with self.progress:
            target = self.opened + count
            assert self.progress.wait_for(lambda: self.opened >= target, timeout=30)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        for sock in self.open:
            sock.close()


def test_twenty_reloads_under_load_refuse_or_reset_nothing_on_unchanged_listeners(
    start_daemon: StartDaemon,
) -> None:
    """Also on a listener whose options change every round: it is handed over, not closed."""
    steady = ("steady", "127.0.0.1:0")
    daemon = start_daemon(listeners(steady, ("moving", "127.0.0.1:0", 100)))
    ports = daemon.ready()
    loads = [Load(ports["steady"]), Load(ports["moving"], open_count=20, new_per_s=100)]
    try:
        for round_number in range(20):
            extra = [("extra", "127.0.0.1:0")] if round_number % 2 == 0 else []
            moving = ("moving", "127.0.0.1:0", 101 + round_number)
            done = reload(daemon, listeners(steady, moving, *extra))
            added, removed = (1, 0) if extra else (0, int(round_number > 0))
            assert (done["unchanged"], done["changed"], done["added"], done["removed"]) == (
                1, 1, added, removed,
            )  # fmt: skip
            assert done["sockets_handed_over"] == 1  # the moving listener's, never rebound
            loads[0].wait_for_new(25)  # the reloads are spread over 500+ new connections
    finally:
        for load in loads:
            load.finish()
    assert [load.errors for load in loads] == [[], []]
    assert loads[0].opened >= 500, f"only {loads[0].opened} new connections during the reloads"
    assert len(started_events(daemon, "steady")) == 1
    assert {e["port"] for e in started_events(daemon, "moving")} == {ports["moving"]}


def test_plan_keeps_unchanged_and_hands_over_addresses() -> None:
    first = listener_config(EchoHandler, name="a")
    second = listener_config(EchoHandler, name="b", index=2)
    running = [
        Listener(first, EchoHandler({}), [], lambda: 0),
        Listener(second, EchoHandler({}), [], lambda: 0),
    ]
    plan = plan_reload(running, [first, listener_config(EchoHandler, name="c", index=2)])
    assert plan.kept == [running[0]]
    assert [start.config.name for start in plan.started] == ["c"]
    assert plan.retired == [running[1]]


def _threads(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/task").iterdir())


def test_retired_listeners_are_cut_after_the_shutdown_timeout_and_release_their_handler(
    tmp_path: Path,
) -> None:
    """A client that never ends kept every replaced file-receive listener (and its threads)
    alive: 10 reloads took a daemon from 1 to 86 threads. Retired listeners now get
    shutdown_timeout_s, then their connections are cut and their handler closed."""
    directory = tmp_path / "in"

    def config(max_bytes: int) -> str:
        return (
            "[daemon]\nshutdown_timeout_s = 0.2\n"
            f'[[listener]]\nname = "up"\nbind = "127.0.0.1:0"\nhandler = "file-receive"\n'
            f'directory = "{directory}"\nmax_bytes = {max_bytes}\nidle_timeout_s = 0\n'
        )

    path = tmp_path / "portd.toml"
    path.write_text(config(1000))
    daemon = Daemon(["-c", str(path)])
    held: list[socket.socket] = []
    try:
        port = daemon.ready()["up"]
        pid = daemon.proc.pid
        for round_number in range(1, 11):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"x")  # a transfer that never ends: the handler's threads work
            held.append(sock)
            path.write_text(config(1000 + round_number))
            daemon.signal(signal.SIGHUP)
            daemon.wait_for("reload_complete")
            replaced = daemon.wait_for("listener_replaced")
            assert replaced["aborted"] == 1  # cut at the timeout, not waited for ever
        busy = _threads(pid)
        assert busy < 40, f"{busy} threads after 10 reloads"
    finally:
        for sock in held:
            sock.close()
        daemon.stop()
