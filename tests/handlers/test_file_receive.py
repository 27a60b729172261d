"""file-receive in a real `portd serve` over loopback: byte-exact files, names that are
never shared or replaced, limits, a full disk, planted symlinks, modes under umask 000,
crash clean-up, cut transfers, draining, and nc sending a file."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import resource
import signal
import socket
import stat
import subprocess
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Daemon, require_tool

StartDaemon = Callable[..., Daemon]
LOOPS = pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
DEFAULT_NAME = re.compile(r"\d{8}T\d{6}\.\d{6}Z_127\.0\.0\.1-\d+_\d+")
CONDITION_TIMEOUT_S = 15.0
KEEP_EMPTY = "keep_empty = true\nmin_free_bytes = 0\n"


def receive_listener(directory: Path, extra: str = "", name: str = "up") -> str:
    """A file-receive listener (no free-space floor unless ``extra`` sets one)."""
    return textwrap.dedent(f"""
        [[listener]]
        name = "{name}"
        bind = "127.0.0.1:0"
        handler = "file-receive"
        directory = "{directory}"
    """) + textwrap.dedent(extra or "min_free_bytes = 0\n")


def echo_listener(name: str = "echo") -> str:
    return f'[[listener]]\nname = "{name}"\nbind = "127.0.0.1:0"\nhandler = "echo"\n'


def upload(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, and return what arrives before the close: b"" when
    portd closed normally (after the file became durable)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return sock.recv(1)


def upload_refused(port: int, data: bytes) -> None:
    """Send ``data`` to a server that gives up on it: it resets the connection, even when
    it read every byte, so a failed upload never looks like a stored one (a clean close)."""
    try:  # the RST may come before connect() returns: then connect() reports it
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            ended_cleanly = sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        ended_cleanly = False
    except OSError as exc:  # the RST came first: shutdown() finds the socket unconnected
        if exc.errno != errno.ENOTCONN:
            raise
        ended_cleanly = False
    assert not ended_cleanly, "a failed upload ended like a stored one"


def open_upload(port: int, data: bytes) -> socket.socket:
    """A connection that has sent ``data`` and stays open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(data)
    return sock


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll a file-system condition (portd logs nothing per chunk) until it holds."""
    deadline = time.monotonic() + CONDITION_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.01)


def partial_holds(directory: Path, size: int) -> Callable[[], bool]:
    """True once a temporary in ``directory`` has ``size`` bytes."""

    def check() -> bool:
        return any(
            path.name.startswith(".portd-partial-") and path.stat().st_size == size
            for path in directory.iterdir()
        )

    return check


def events(daemon: Daemon, name: str) -> list[dict[str, Any]]:
    return [event for event in daemon.events if event["event"] == name]


def contents(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir()}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@LOOPS
def test_large_and_empty_files_arrive_byte_exact_with_their_sha256_logged(
    start_daemon: StartDaemon, tmp_path: Path, loop: str
) -> None:
    directory = tmp_path / "in"
    daemon = start_daemon(f'[daemon]\nloop = "{loop}"\n' + receive_listener(directory, KEEP_EMPTY))
    port = daemon.ready()["up"]
    large = os.urandom(64 << 20)
    assert upload(port, large) == b""
    assert upload(port, b"") == b""
    logged = [daemon.wait_for("file_received") for _ in range(2)]
    assert [(e["bytes"], e["sha256"]) for e in logged] == [
        (len(large), sha256(large)),
        (0, sha256(b"")),
    ]
    assert contents(directory) == {logged[0]["name"]: large, logged[1]["name"]: b""}
    assert all(DEFAULT_NAME.fullmatch(e["name"]) for e in logged)
    assert all(e["duration_ms"] > 0 for e in logged)


def test_concurrent_uploads_to_one_name_never_share_or_replace_a_file(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    directory.mkdir(mode=0o700)
    (directory / "upload.bin").write_bytes(b"was here first")
    daemon = start_daemon(
        receive_listener(directory, 'file_name = "upload.bin"\nmin_free_bytes = 0')
    )
    port = daemon.ready()["up"]
    payloads = [os.urandom(2 << 20) for _ in range(12)]
    start = threading.Barrier(len(payloads))
    results: list[bytes] = []

    def send(data: bytes) -> None:
        start.wait()
        results.append(upload(port, data))

    threads = [threading.Thread(target=send, args=(data,)) for data in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [b""] * len(payloads)
    logged = {daemon.wait_for("file_received")["name"] for _ in payloads}
    assert logged == {f"upload-{n}.bin" for n in range(1, 13)}
    stored = contents(directory)
    assert stored.pop("upload.bin") == b"was here first"
    assert sorted(stored.values()) == sorted(payloads)


def test_over_max_bytes_the_transfer_is_cut_and_leaves_no_file(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    daemon = start_daemon(receive_listener(directory, 'max_bytes = "1MiB"\nmin_free_bytes = 0'))
    port = daemon.ready()["up"]
    exact = os.urandom(1 << 20)
    assert upload(port, exact) == b""
    assert daemon.wait_for("file_received")["bytes"] == 1 << 20
    upload_refused(port, os.urandom((1 << 20) + 1))
    upload_refused(port, os.urandom(16 << 20))
    failed = [daemon.wait_for("file_failed") for _ in range(2)]
    assert [(e["reason"], e["error"]) for e in failed] == [
        ("max_bytes", "more than 1048576 bytes")
    ] * 2
    assert list(contents(directory).values()) == [exact]


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only), lazily unmounted at teardown even while portd holds it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def test_a_full_disk_fails_that_transfer_only_and_the_next_succeeds_once_space_is_back(
    start_daemon: StartDaemon, small_tmpfs: Path
) -> None:
    directory = small_tmpfs / "in"
    daemon = start_daemon(receive_listener(directory) + echo_listener())
    ports = daemon.ready()
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * (700 << 10))
    data = os.urandom(512 << 10)
    upload_refused(ports["up"], data)
    failed = daemon.wait_for("file_failed")
    assert (failed["reason"], failed["error"]) == ("ENOSPC", "No space left on device")
    assert contents(directory) == {}
    with socket.create_connection(("127.0.0.1", ports["echo"]), timeout=10) as sock:
        sock.sendall(b"still serving")
        assert sock.recv(64) == b"still serving"
    filler.unlink()
    assert upload(ports["up"], data) == b""
    name = daemon.wait_for("file_received")["name"]
    assert contents(directory) == {name: data}
    assert daemon.proc.poll() is None


def test_a_file_size_limit_efbig_fails_that_transfer_only(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """RLIMIT_FSIZE makes write() fail with EFBIG (Python ignores SIGXFSZ)."""
    directory = tmp_path / "in"
    limit = 1 << 20
    daemon = start_daemon(
        receive_listener(directory),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    port = daemon.ready()["up"]
    upload_refused(port, os.urandom(4 << 20))
    assert daemon.wait_for("file_failed")["reason"] == "EFBIG"
    assert contents(directory) == {}
    small = os.urandom(limit // 2)
    assert upload(port, small) == b""
    assert list(contents(directory).values()) == [small]


def test_below_the_free_space_floor_a_connection_is_refused_at_once(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    daemon = start_daemon(receive_listener(directory, 'min_free_bytes = "1000TB"'))
    port = daemon.ready()["up"]
    upload_refused(port, os.urandom(8 << 20))
    refused = daemon.wait_for("file_refused")
    assert refused["reason"] == "min_free_bytes"
    assert refused["min_free_bytes"] == 10**15
    assert 0 < refused["free_bytes"] < 10**15
    assert contents(directory) == {}


def test_symlinks_planted_at_the_final_name_are_never_followed(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    directory, outside = tmp_path / "in", tmp_path / "outside"
    directory.mkdir(mode=0o700)
    outside.mkdir()
    (outside / "target").write_bytes(b"original")
    (directory / "upload").symlink_to(outside / "target")
    (directory / "upload-1").symlink_to(outside / "created-by-portd")  # dangling
    daemon = start_daemon(receive_listener(directory, 'file_name = "upload"\nmin_free_bytes = 0'))
    port = daemon.ready()["up"]
    assert upload(port, b"payload") == b""
    assert daemon.wait_for("file_received")["name"] == "upload-2"
    assert (directory / "upload-2").read_bytes() == b"payload"
    assert not (directory / "upload-2").is_symlink()
    assert contents(outside) == {"target": b"original"}
    assert (directory / "upload").readlink() == outside / "target"
    assert (directory / "upload-1").readlink() == outside / "created-by-portd"


def test_symlinks_planted_at_the_temporary_names_are_never_followed(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """Temporaries are named .portd-partial-PID-CONN_ID first; plant all the likely ones."""
    directory, outside = tmp_path / "in", tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_bytes(b"original")
    daemon = start_daemon(receive_listener(directory))
    port = daemon.ready()["up"]
    planted = {f".portd-partial-{daemon.proc.pid}-{n}" for n in range(1, 9)}
    for n, name in enumerate(sorted(planted)):
        (directory / name).symlink_to(outside / ("target" if n == 0 else f"victim-{n}"))
    data = os.urandom(1 << 20)
    assert upload(port, data) == b""
    received = daemon.wait_for("file_received")
    assert received["conn_id"] in range(1, 9), "the first-choice temporary was not planted"
    assert contents(outside) == {"target": b"original"}
    assert {p.name for p in directory.iterdir() if p.is_symlink()} == planted
    assert (directory / received["name"]).read_bytes() == data
    assert len(list(directory.iterdir())) == len(planted) + 1


@pytest.mark.parametrize("umask", [0o000, 0o777], ids=["umask-000", "umask-777"])
def test_whatever_the_umask_files_are_0600_or_as_configured_and_the_directory_0700(
    start_daemon: StartDaemon, tmp_path: Path, umask: int
) -> None:
    """umask 000 must not widen the modes, nor 777 narrow them."""
    private, shared = tmp_path / "private", tmp_path / "shared"
    daemon = start_daemon(
        receive_listener(private, name="private")
        + receive_listener(
            shared, 'file_mode = 0o640\nfile_name = "{listener}.dat"\nmin_free_bytes = 0', "shared"
        ),
        umask=umask,
    )
    ports = daemon.ready()
    for name in ("private", "shared"):
        assert upload(ports[name], b"data") == b""
        daemon.wait_for("file_received")
    for directory, file_mode in ((private, 0o600), (shared, 0o640)):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        [path] = directory.iterdir()
        assert stat.S_IMODE(path.stat().st_mode) == file_mode
    assert (shared / "shared.dat").read_bytes() == b"data"


def test_stale_temporaries_are_removed_at_start_and_counted(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    directory, outside = tmp_path / "in", tmp_path / "outside"
    directory.mkdir(mode=0o700)
    outside.mkdir()
    (outside / "target").write_bytes(b"original")
    (directory / ".portd-partial-1-1").write_bytes(b"half a file")
    (directory / ".portd-partial-99-3-0a1b2c3d").write_bytes(b"")
    (directory / ".portd-partial-link").symlink_to(outside / "target")
    (directory / ".portd-partial-dir").mkdir()  # not portd's: left alone
    (directory / "keep.txt").write_bytes(b"kept")
    daemon = start_daemon(receive_listener(directory))
    ready = daemon.wait_for("receive_directory_ready")
    assert (ready["directory"], ready["stale_partials_removed"]) == (str(directory), 3)
    assert {p.name for p in directory.iterdir()} == {"keep.txt", ".portd-partial-dir"}
    assert contents(outside) == {"target": b"original"}


def test_a_crash_mid_transfer_leaves_only_a_temporary_which_the_next_start_removes(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    first = start_daemon(receive_listener(directory))
    with open_upload(first.ready()["up"], os.urandom(1 << 20)):
        wait_until(partial_holds(directory, 1 << 20), "the temporary holds 1 MiB")
        first.signal(signal.SIGKILL)
        first.wait()
    [leftover] = directory.iterdir()
    assert leftover.name == f".portd-partial-{first.proc.pid}-1"
    second = start_daemon(receive_listener(directory))
    assert second.wait_for("receive_directory_ready")["stale_partials_removed"] == 1
    assert contents(directory) == {}


@pytest.mark.parametrize("keep_partial", [False, True], ids=["discard", "keep"])
def test_a_reset_mid_transfer_removes_the_partial_unless_kept(
    start_daemon: StartDaemon, tmp_path: Path, keep_partial: bool
) -> None:
    directory = tmp_path / "in"
    options = (
        f'file_name = "upload"\nkeep_partial = {str(keep_partial).lower()}\nmin_free_bytes = 0'
    )
    daemon = start_daemon(receive_listener(directory, options))
    data = os.urandom(1 << 20)
    with open_upload(daemon.ready()["up"], data) as sock:
        wait_until(partial_holds(directory, len(data)), "the temporary holds 1 MiB")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close: RST
    if keep_partial:
        kept = daemon.wait_for("file_partial_kept")
        assert (kept["name"], kept["bytes"], kept["sha256"]) == (
            "upload.partial",
            len(data),
            sha256(data),
        )
        assert kept["reason"] == "connection_lost"
        assert contents(directory) == {"upload.partial": data}
    else:
        failed = daemon.wait_for("file_failed")
        assert (failed["reason"], failed["bytes"]) == ("connection_lost", len(data))
        assert contents(directory) == {}


def test_a_drain_lets_a_transfer_finish_and_removes_one_cut_at_the_timeout(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    daemon = start_daemon("[daemon]\nshutdown_timeout_s = 1\n" + receive_listener(directory))
    port = daemon.ready()["up"]
    finishing, cut = os.urandom(1 << 20), os.urandom(1 << 20)
    with open_upload(port, finishing) as done, open_upload(port, cut) as slow:
        wait_until(lambda: len(list(directory.iterdir())) == 2, "both transfers started")
        daemon.signal(signal.SIGTERM)
        daemon.wait_for("shutdown_started")
        done.shutdown(socket.SHUT_WR)
        assert done.recv(1) == b""
        with pytest.raises(ConnectionResetError):  # cut by portd once the timeout passed
            slow.recv(1)
    assert daemon.wait() == 0
    assert daemon.wait_for("file_failed")["reason"] == "aborted"
    assert list(contents(directory).values()) == [finishing]


def test_listeners_of_one_daemon_may_share_a_directory(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    shared = 'file_name = "{listener}"\nmin_free_bytes = 0'
    daemon = start_daemon(
        receive_listener(directory, shared, "a") + receive_listener(directory, shared, "b")
    )
    ports = daemon.ready()
    assert upload(ports["a"], b"to a") == upload(ports["b"], b"to b") == b""
    assert {daemon.wait_for("file_received")["name"] for _ in "ab"} == {"a", "b"}
    assert contents(directory) == {"a": b"to a", "b": b"to b"}


def test_a_reload_with_new_options_leaves_the_transfer_in_flight_intact(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """The replaced listener drains while its successor shares the directory: the
    successor must neither fail to open it nor remove the live temporary as stale."""
    directory = tmp_path / "in"
    daemon = start_daemon(receive_listener(directory, 'max_bytes = "4MiB"\nmin_free_bytes = 0'))
    port = daemon.ready()["up"]
    first = os.urandom(1 << 20)
    with open_upload(port, first) as in_flight:
        wait_until(partial_holds(directory, len(first)), "the temporary holds 1 MiB")
        config = Path(daemon.args[daemon.args.index("-c") + 1])
        config.write_text(receive_listener(directory, 'max_bytes = "1KiB"\nmin_free_bytes = 0'))
        daemon.signal(signal.SIGHUP)
        assert daemon.wait_for("receive_directory_ready")["stale_partials_removed"] == 0
        assert daemon.wait_for("reload_complete")["changed"] == 1
        in_flight.shutdown(socket.SHUT_WR)
        assert in_flight.recv(1) == b""
    assert daemon.wait_for("file_received")["bytes"] == len(first)
    upload_refused(port, os.urandom(2048))
    assert daemon.wait_for("file_failed")["reason"] == "max_bytes"
    assert list(contents(directory).values()) == [first]


def test_nc_sends_a_file_that_arrives_with_the_same_sha256(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    """`nc -N` half-closes at the end of stdin, then waits for portd's close."""
    nc = require_tool("nc")
    source = tmp_path / "source"
    source.write_bytes(os.urandom(8 << 20))
    directory = tmp_path / "in"
    daemon = start_daemon(receive_listener(directory))
    port = daemon.ready()["up"]
    with source.open("rb") as stdin:
        done = subprocess.run(
            [nc, "-N", "127.0.0.1", str(port)], stdin=stdin, capture_output=True, timeout=30,
            check=False,
        )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, b""), done.stderr
    received = daemon.wait_for("file_received")
    expected = sha256(source.read_bytes())
    assert received["sha256"] == expected
    assert sha256((directory / received["name"]).read_bytes()) == expected


def connection_errors(daemon: Daemon, count: int = 1) -> list[str | None]:
    """The ``error`` of the first ``count`` connection_closed lines (logged before or after
    file_failed, as the worker thread and the loop meet)."""
    wait_until(lambda: len(events(daemon, "connection_closed")) >= count, "connections closed")
    return [event["error"] for event in events(daemon, "connection_closed")]


def ends_with_reset(sock: socket.socket) -> bool:
    """True when the peer (portd) ended the connection with an RST, not a FIN."""
    sock.settimeout(30)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    return False


@LOOPS
def test_probes_that_send_no_byte_store_no_file(
    start_daemon: StartDaemon, tmp_path: Path, loop: str
) -> None:
    """nc -z, portd scan and health checks each left a durable 0-byte file."""
    directory = tmp_path / "in"
    daemon = start_daemon(f'[daemon]\nloop = "{loop}"\n' + receive_listener(directory))
    port = daemon.ready()["up"]
    for _ in range(20):
        socket.create_connection(("127.0.0.1", port), timeout=10).close()  # FIN, no byte
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # RST
    with socket.create_connection(("127.0.0.1", port), timeout=10) as held:
        wait_until(lambda: len(events(daemon, "file_empty")) >= 21, "21 probes were logged")
        assert list(directory.iterdir()) == []  # nothing on disk, not even a temporary
        held.shutdown(socket.SHUT_WR)
        assert held.recv(1) == b""  # an empty connection ends normally: nothing failed
    empty = [daemon.wait_for("file_empty") for _ in range(22)]
    assert sorted({e["ended_by"] for e in empty}) == ["connection_lost", "eof"]
    assert events(daemon, "file_received") == events(daemon, "file_failed") == []
    assert contents(directory) == {}


def test_keep_empty_stores_a_connection_without_a_byte_as_an_empty_file(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    directory = tmp_path / "in"
    daemon = start_daemon(receive_listener(directory, KEEP_EMPTY))
    assert upload(daemon.ready()["up"], b"") == b""
    received = daemon.wait_for("file_received")
    assert received["bytes"] == 0
    assert contents(directory) == {received["name"]: b""}


@LOOPS
def test_a_size_cap_rejection_is_an_rst_named_in_the_log_without_a_traceback(
    start_daemon: StartDaemon, tmp_path: Path, loop: str
) -> None:
    """uvloop: conn.reset() after the transport closed raised ValueError in a callback."""
    directory = tmp_path / "in"
    daemon = start_daemon(
        f'[daemon]\nloop = "{loop}"\n'
        + receive_listener(directory, "max_bytes = 1000\nmin_free_bytes = 0")
    )
    port = daemon.ready()["up"]
    for count in range(1, 4):
        upload_refused(port, os.urandom(64 << 10))
        assert daemon.wait_for("file_failed")["reason"] == "max_bytes"
        assert connection_errors(daemon, count) == ["file_failed: max_bytes"] * count
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert not [line for line in daemon.lines if "Traceback" in line or "ValueError" in line]
    assert events(daemon, "loop_error") == []


@LOOPS
def test_an_upload_cut_by_the_idle_timeout_ends_with_an_rst(
    start_daemon: StartDaemon, tmp_path: Path, loop: str
) -> None:
    """It ended with a FIN, so nc and socat exited 0 with nothing stored."""
    directory = tmp_path / "in"
    daemon = start_daemon(
        f'[daemon]\nloop = "{loop}"\n'
        + receive_listener(directory, "idle_timeout_s = 0.5\nmin_free_bytes = 0")
    )
    with open_upload(daemon.ready()["up"], b"half an upload") as sock:
        assert ends_with_reset(sock)
    failed = daemon.wait_for("file_failed")
    assert (failed["reason"], failed["bytes"]) == ("aborted", len(b"half an upload"))
    assert connection_errors(daemon) == ["idle_timeout"]
    assert contents(directory) == {}


@LOOPS
def test_an_upload_cut_at_the_end_of_the_drain_ends_with_an_rst(
    start_daemon: StartDaemon, tmp_path: Path, loop: str
) -> None:
    directory = tmp_path / "in"
    daemon = start_daemon(
        f'[daemon]\nloop = "{loop}"\nshutdown_timeout_s = 0.2\n' + receive_listener(directory)
    )
    with open_upload(daemon.ready()["up"], b"never finished") as sock:
        wait_until(partial_holds(directory, len(b"never finished")), "the temporary has it")
        daemon.signal(signal.SIGTERM)
        assert ends_with_reset(sock)
    assert daemon.wait() == 0
    assert daemon.wait_for("file_failed")["reason"] == "aborted"
    assert connection_errors(daemon) == ["cut at the end of the drain"]
