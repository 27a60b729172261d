"""`portd listen` (stdio mode, TCP) as a real process: files byte-exact against the real
nc and socat, the EOF rules, -v, -k, and how it ends (exit codes, Ctrl-C, stdout errors)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import struct
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.processes import Process, Spawner, read_to_eof, tcp_client, write_payload
from tests.support import PORTD, require_tool

SIZES = pytest.mark.parametrize("size", [0, 1 << 20], ids=["empty", "1MiB"])
TOTALS = r"received (\d+) bytes sha256 ([0-9a-f]{64}); sent (\d+) bytes sha256 ([0-9a-f]{64}); "
LINGER_ZERO = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
PROMPT_S = 3.0  # Ctrl-C and -q 0 must end the process well within this


def listening_line(port: int) -> str:
    return f"listening on 127.0.0.1:{port} (tcp)"


def peer_sending(tool: str, port: int, path: Path) -> list[str]:
    """The command line with which ``tool`` sends the file at ``path`` and ends its side."""
    if tool == "nc":
        return [require_tool("nc"), "-N", "127.0.0.1", str(port)]  # -N: shutdown after stdin
    return [require_tool("socat"), "-u", f"FILE:{path}", f"TCP:127.0.0.1:{port}"]


def peer_receiving(tool: str, port: int, path: Path) -> list[str]:
    """The command line with which ``tool`` saves everything it receives into ``path``."""
    if tool == "nc":
        return [require_tool("nc"), "-d", "127.0.0.1", str(port)]  # -d: never reads stdin
    return [require_tool("socat"), "-u", f"TCP:127.0.0.1:{port}", f"CREATE:{path}"]


@SIZES
@pytest.mark.parametrize("tool", ["nc", "socat"])
def test_receives_a_file_byte_exact(spawn: Spawner, tmp_path: Path, tool: str, size: int) -> None:
    """`portd listen PORT > out` gets the file a peer sends, then exits 0 when it is done."""
    payload = write_payload(tmp_path / "payload", size)
    received = tmp_path / "received"
    listen = spawn.portd("listen", "127.0.0.1:0", stdout=received)
    port = listen.port()
    peer = spawn(*peer_sending(tool, port, tmp_path / "payload"), stdin=tmp_path / "payload")
    assert peer.wait() == 0, peer.stderr
    assert listen.wait() == 0, listen.stderr
    assert received.read_bytes() == payload
    assert listen.lines == [listening_line(port)]


@SIZES
@pytest.mark.parametrize("tool", ["nc", "socat"])
def test_serves_stdin_byte_exact(spawn: Spawner, tmp_path: Path, tool: str, size: int) -> None:
    """`portd listen PORT < file` sends the file, half-closes, and exits 0 once the peer ends."""
    payload = write_payload(tmp_path / "payload", size)
    saved = tmp_path / "saved"
    listen = spawn.portd("listen", "127.0.0.1:0", stdin=tmp_path / "payload")
    port = listen.port()
    peer = spawn(*peer_receiving(tool, port, saved), stdout=saved if tool == "nc" else None)
    assert peer.wait() == 0, peer.stderr
    assert listen.wait() == 0, listen.stderr
    assert saved.read_bytes() == payload
    assert listen.output == b""


def test_with_a_terminal_on_stdin_exits_when_the_peer_ends(spawn: Spawner, tmp_path: Path) -> None:
    """Typed at a shell, stdin is a terminal that never ends: the peer's end ends the session."""
    controller, terminal = os.openpty()
    try:
        received = tmp_path / "received"
        listen = spawn.portd("listen", "127.0.0.1:0", stdin=terminal, stdout=received)
        os.close(terminal)
        with tcp_client(listen.port()) as client:
            client.sendall(b"typed nothing, got this\n")
        assert listen.wait() == 0, listen.stderr
    finally:
        os.close(controller)
    assert received.read_bytes() == b"typed nothing, got this\n"


def test_port_file_appears_once_listening(spawn: Spawner, tmp_path: Path) -> None:
    """A script's readiness signal: the file appears (atomically) only once connects work."""
    port_file = tmp_path / "port"
    listen = spawn.portd("listen", "--port-file", str(port_file), "127.0.0.1:0")
    deadline = time.monotonic() + 10
    while not port_file.exists():  # what a shell script does; nothing else to wait on here
        assert time.monotonic() < deadline, listen.stderr
        time.sleep(0.01)
    port = int(port_file.read_text(encoding="ascii"))
    assert port_file.read_text(encoding="ascii") == f"{port}\n"
    with tcp_client(port) as client:
        client.sendall(b"x")
    assert listen.wait() == 0
    assert listen.output == b"x"
    assert listen.lines == [listening_line(port)]
    assert [path.name for path in tmp_path.iterdir()] == ["port"]  # no temporary file left behind


def test_default_eof_half_closes_and_keeps_reading(spawn: Spawner) -> None:
    """stdin's end reaches the peer as EOF; what the peer sends afterwards still reaches stdout."""
    listen = spawn.portd("listen", "127.0.0.1:0", stdin=subprocess.PIPE)
    with tcp_client(listen.port()) as client:
        listen.write(b"question\n")
        listen.close_stdin()
        assert read_to_eof(client) == b"question\n"
        client.sendall(b"answer after your EOF\n")
        assert listen.expect_output(22) == b"answer after your EOF\n"
        assert listen.proc.poll() is None  # still reading: the peer has not ended yet
    assert listen.wait() == 0
    assert listen.output == b"answer after your EOF\n"


def test_close_on_eof_closes_without_waiting_for_the_peer(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "--close-on-eof", "127.0.0.1:0", stdin=subprocess.PIPE)
    with tcp_client(listen.port()) as client:
        listen.write(b"bye\n")
        listen.close_stdin()
        assert read_to_eof(client) == b"bye\n"
        assert listen.wait() == 0, listen.stderr  # while the client still holds its side open
    assert listen.lines[1:] == []


@pytest.mark.parametrize("delay", ["0", "1"])
def test_quit_after_eof_does_not_wait_for_the_peer(spawn: Spawner, delay: str) -> None:
    """-q SECS (Debian nc): half-close at stdin's end, keep reading, quit SECS later."""
    listen = spawn.portd("listen", "-q", delay, "127.0.0.1:0", stdin=subprocess.PIPE)
    with tcp_client(listen.port()) as client:
        listen.close_stdin()
        assert read_to_eof(client) == b""
        eof_seen = time.monotonic()
        if delay == "1":
            client.sendall(b"within the second\n")
            assert listen.expect_output(18) == b"within the second\n"
        assert listen.wait(timeout=float(delay) + PROMPT_S) == 0, listen.stderr
        waited = time.monotonic() - eof_seen
    assert waited >= float(delay) - 0.1  # -q 1 never quits early; the client never closed
    assert listen.lines[1:] == []


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param(("-q-1",), id="attached"),
        pytest.param(("-q", "-1"), id="separate"),
    ],
)
def test_negative_quit_after_waits_for_the_peer(spawn: Spawner, spelling: tuple[str, ...]) -> None:
    """`-q -1` is how Debian nc users spell "wait for the peer" (the README's negative SECS)."""
    listen = spawn.portd("listen", *spelling, "127.0.0.1:0", stdin=subprocess.PIPE)
    with tcp_client(listen.port()) as client:
        listen.close_stdin()
        assert read_to_eof(client) == b""
        client.sendall(b"still heard\n")
        listen.expect_output(12)
    assert listen.wait() == 0
    assert listen.output == b"still heard\n"


def test_verbose_reports_the_peer_and_totals_with_sha256(spawn: Spawner, tmp_path: Path) -> None:
    """-v: peer lines and one totals line on stderr; stdout still carries only data."""
    sent = write_payload(tmp_path / "to-peer", 70_000)
    from_peer = os.urandom(90_000)
    listen = spawn.portd("listen", "-v", "127.0.0.1:0", stdin=tmp_path / "to-peer")
    port = listen.port()
    with tcp_client(port) as client:
        peer = f"127.0.0.1:{client.getsockname()[1]}"
        client.sendall(from_peer)
        client.shutdown(socket.SHUT_WR)
        assert read_to_eof(client) == sent
    assert listen.wait() == 0
    assert listen.output == from_peer
    assert listen.lines[:2] == [listening_line(port), f"connection from {peer}"]
    totals = re.fullmatch(TOTALS + r"\d+\.\d\d s", listen.lines[2])
    assert totals is not None, listen.lines
    assert totals.groups() == (
        str(len(from_peer)), hashlib.sha256(from_peer).hexdigest(),
        str(len(sent)), hashlib.sha256(sent).hexdigest(),
    )  # fmt: skip
    assert listen.lines[3:] == [f"connection from {peer} closed"]


def test_keep_serves_nc_clients_concurrently(spawn: Spawner, tmp_path: Path) -> None:
    """-k: four real nc clients at once; every byte of each reaches stdout exactly once."""
    received = tmp_path / "received"
    listen = spawn.portd("listen", "-k", "-v", "127.0.0.1:0", stdout=received)
    port = listen.port()
    size = 256 * 1024
    clients = []
    for index, letter in enumerate(b"ABCD"):
        (tmp_path / f"c{index}").write_bytes(bytes([letter]) * size)
        clients.append(
            spawn(require_tool("nc"), "-N", "127.0.0.1", str(port), stdin=tmp_path / f"c{index}")
        )
    for client in clients:
        assert client.wait() == 0, client.stderr
    # nc may exit with its last bytes still in flight: wait until portd has read them all.
    listen.expect_lines(r"^connection from 127\.0\.0\.1:\d+ closed$", 4)
    listen.interrupt()
    assert listen.wait() == 130
    assert Counter(received.read_bytes()) == dict.fromkeys(b"ABCD", size)
    assert "Traceback" not in listen.stderr


def test_keep_sends_stdin_to_every_client_and_their_bytes_to_stdout(spawn: Spawner) -> None:
    """-k: all four are connected at once (nc -lk would serve them one after the other)."""
    listen = spawn.portd("listen", "-k", "-v", "127.0.0.1:0", stdin=subprocess.PIPE)
    port = listen.port()
    clients = [tcp_client(port) for _ in range(4)]
    peers = [f"127.0.0.1:{client.getsockname()[1]}" for client in clients]
    try:
        for peer in peers:
            listen.expect(f"^connection from {peer}$")
        listen.write(b"to all of you\n")
        listen.close_stdin()
        for client in clients:
            assert read_to_eof(client) == b"to all of you\n"  # then EOF: stdin has ended
        for index, client in enumerate(clients):
            client.sendall(b"%d" % index * 1000)
    finally:
        for client in clients:
            client.close()
    for peer in peers:
        listen.expect(f"^connection from {peer} closed$")
    listen.interrupt()
    assert listen.wait() == 130
    assert Counter(listen.output) == dict.fromkeys(b"0123", 1000)
    assert "Traceback" not in listen.stderr


def test_a_second_client_is_refused_without_keep(spawn: Spawner) -> None:
    """Like nc -l: one connection, and the listening socket is closed once it is accepted."""
    listen = spawn.portd("listen", "127.0.0.1:0", stdin=subprocess.PIPE)
    port = listen.port()
    with tcp_client(port) as first:
        first.sendall(b"1")
        listen.expect_output(1)  # accepted
        with pytest.raises(ConnectionRefusedError):
            tcp_client(port)
    listen.close_stdin()
    assert listen.wait() == 0


def send_forever(client: socket.socket) -> None:
    """Send until the connection fails (at most 64 MiB)."""
    for _ in range(1000):
        client.sendall(b"more" * 16384)


def test_a_closed_stdout_pipe_ends_quietly_with_0(spawn: Spawner) -> None:
    """`portd listen 0 | head -c 5`: the reader has what it wanted; no error, exit 0."""
    reader, writer = os.pipe()
    with open(reader, "rb", buffering=0) as pipe:  # noqa: PTH123 - an fd, not a path
        try:
            listen = spawn.portd("listen", "127.0.0.1:0", stdout=writer, stdin=subprocess.PIPE)
        finally:
            os.close(writer)
        with tcp_client(listen.port()) as client:
            client.sendall(b"hello")
            assert pipe.read(5) == b"hello"
            pipe.close()
            with pytest.raises(OSError):  # noqa: PT011 - reset or EPIPE, depending on timing
                send_forever(client)
            assert listen.wait() == 0
    assert listen.lines[1:] == []


@pytest.mark.parametrize("flags", [(), ("-k",)], ids=["one", "keep"])
def test_stdout_write_error_exits_1_with_the_reason(spawn: Spawner, flags: tuple[str, ...]) -> None:
    """stdout on a full disk: the data did not arrive, so the status says so (with -k this
    error was once swallowed and the data dropped without a word)."""
    listen = spawn.portd("listen", *flags, "127.0.0.1:0", stdout=Path("/dev/full"))
    port = listen.port()
    with tcp_client(port) as client:
        peer = f"127.0.0.1:{client.getsockname()[1]}"
        client.sendall(b"lost")
        assert listen.wait() == 1
    assert listen.lines == [
        listening_line(port),
        f"portd: {peer}: cannot write to stdout: No space left on device",
    ]


def test_a_reset_connection_exits_1(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "127.0.0.1:0", stdin=subprocess.PIPE)
    port = listen.port()
    client = tcp_client(port)
    peer = f"127.0.0.1:{client.getsockname()[1]}"
    client.sendall(b"x")
    listen.expect_output(1)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
    client.close()  # linger 0: RST instead of FIN
    assert listen.wait() == 1
    assert listen.lines[1:] == [f"portd: {peer}: connection lost: Connection reset by peer"]


@pytest.mark.parametrize("keep", [False, True], ids=["one", "keep"])
def test_ctrl_c_while_waiting_exits_130_at_once(spawn: Spawner, keep: bool) -> None:
    listen = spawn.portd("listen", *(["-k"] if keep else []), "127.0.0.1:0")
    port = listen.port()
    listen.interrupt()
    assert listen.wait(timeout=PROMPT_S) == 130
    assert listen.lines == [listening_line(port)]


def test_ctrl_c_during_a_transfer_exits_130_at_once(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "127.0.0.1:0", stdin=subprocess.PIPE)
    port = listen.port()
    with tcp_client(port) as client:
        client.sendall(b"in flight")
        listen.expect_output(9)
        listen.interrupt()
        assert listen.wait(timeout=PROMPT_S) == 130
        assert read_to_eof(client) == b""  # the connection went away with the process
    assert listen.lines == [listening_line(port)]


CTRL_C_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def helper_threads(pid: int, count: int) -> list[int]:
    """The thread ids of ``pid`` other than its main thread, once there are ``count``
    and the main thread is out of starting them (it blocks the signals meanwhile, so
    that the new thread inherits the mask): neither has an event to wait for."""
    deadline = time.monotonic() + PROMPT_S
    while True:
        tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir() if int(t.name) != pid]
        settled = len(tids) >= count and not blocked_signals(pid, pid) >> (signal.SIGINT - 1) & 1
        if settled or time.monotonic() > deadline:
            return tids
        time.sleep(0.01)


def blocked_signals(pid: int, tid: int) -> int:
    """The thread's blocked-signal mask (SigBlk in /proc), bit N-1 for signal N."""
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    found = re.search(r"^SigBlk:\s*([0-9a-f]+)$", status, re.M)
    assert found is not None, status
    return int(found[1], 16)


@pytest.mark.parametrize(("keep", "helpers"), [(False, 2), (True, 3)], ids=["one", "keep"])
def test_every_helper_thread_leaves_ctrl_c_to_the_main_thread(
    spawn: Spawner, keep: bool, helpers: int
) -> None:
    """The kernel hands a process its SIGINT on any thread that does not block it, and
    Python wakes its main thread only for a signal that lands there: Ctrl-C on the
    thread reading stdin did nothing (CI saw it on 3.13). The relay's threads (stdin,
    socket; with -k, accept) block the signals, so the main thread gets them."""
    listen = spawn.portd("listen", *(["-k"] if keep else []), "127.0.0.1:0", stdin=subprocess.PIPE)
    port = listen.port()
    with tcp_client(port) as client:
        client.sendall(b"in flight")
        listen.expect_output(9)
        pid = listen.proc.pid
        tids = helper_threads(pid, helpers)
        assert len(tids) >= helpers
        for tid in tids:
            mask = blocked_signals(pid, tid)
            assert [s.name for s in CTRL_C_SIGNALS if not mask >> (s - 1) & 1] == [], tid
        assert blocked_signals(pid, pid) >> (signal.SIGINT - 1) & 1 == 0
        listen.interrupt()
        assert listen.wait(timeout=PROMPT_S) == 130


def reset_while_in_the_backlog(process: Process, port: int) -> str:
    """Connect and reset while ``process`` is stopped, so it accepts an already-reset
    connection; return that client's address."""
    process.proc.send_signal(signal.SIGSTOP)
    os.waitpid(process.proc.pid, os.WUNTRACED)  # returns once it is really stopped
    try:
        client = tcp_client(port)
        peer = f"127.0.0.1:{client.getsockname()[1]}"
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
        client.close()
    finally:
        process.proc.send_signal(signal.SIGCONT)
    return peer


def test_a_client_reset_before_accept_ends_with_one_line(spawn: Spawner) -> None:
    """Regression: the peer's address was asked of the socket after the reset (traceback)."""
    listen = spawn.portd("listen", "127.0.0.1:0", stdin=subprocess.PIPE)
    port = listen.port()
    peer = reset_while_in_the_backlog(listen, port)
    assert listen.wait() == 1
    assert listen.lines == [
        listening_line(port),
        f"portd: {peer}: connection lost: Connection reset by peer",
    ]


def test_keep_survives_a_client_reset_before_accept(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "-k", "-v", "127.0.0.1:0")
    port = listen.port()
    peer = reset_while_in_the_backlog(listen, port)
    listen.expect(f"^connection from {peer} closed$")
    with tcp_client(port) as client:
        client.sendall(b"next one")
    assert listen.expect_output(8) == b"next one"
    listen.interrupt()
    assert listen.wait() == 130
    assert "Traceback" not in listen.stderr


def test_keep_ends_quietly_when_the_stdout_pipe_closes(spawn: Spawner) -> None:
    """`portd listen -k 0 | head -c 5` ends once head has its bytes, like without -k."""
    reader, writer = os.pipe()
    with open(reader, "rb", buffering=0) as pipe:  # noqa: PTH123 - an fd, not a path
        try:
            listen = spawn.portd("listen", "-k", "127.0.0.1:0", stdout=writer)
        finally:
            os.close(writer)
        with tcp_client(listen.port()) as client:
            client.sendall(b"hello")
            assert pipe.read(5) == b"hello"
            pipe.close()
            with pytest.raises(OSError):  # noqa: PT011 - reset or EPIPE, depending on timing
                send_forever(client)
            assert listen.wait() == 0
    assert listen.lines[1:] == []


def test_a_peer_that_leaves_before_stdin_is_sent_exits_1(spawn: Spawner, tmp_path: Path) -> None:
    """`portd listen 0 < big` and the client goes away unread: the file did not arrive."""
    write_payload(tmp_path / "big", 32 << 20)  # more than loopback's socket buffers hold
    listen = spawn.portd("listen", "127.0.0.1:0", stdin=tmp_path / "big", stdout=subprocess.DEVNULL)
    port = listen.port()
    with tcp_client(port) as client:
        peer = f"127.0.0.1:{client.getsockname()[1]}"
        client.recv(1)  # connected and sending
    assert listen.wait() == 1
    assert len(listen.lines) == 2, listen.lines
    assert listen.lines[1] in {  # which of its two threads notices first is up to the kernel
        f"portd: {peer}: peer stopped reading before stdin ended: Connection reset by peer",
        f"portd: {peer}: peer stopped reading before stdin ended: Broken pipe",
        f"portd: {peer}: connection lost: Connection reset by peer",
    }


def test_no_stdin_ends_with_the_peer_even_while_stdin_stays_open(spawn: Spawner) -> None:
    """-d (nc -d): stdin is never read, so an open pipe there does not keep portd running,
    and the connection is never half-closed by portd."""
    listen = spawn.portd("listen", "-d", "127.0.0.1:0", stdin=subprocess.PIPE)
    with tcp_client(listen.port()) as client:
        client.sendall(b"one way\n")
        client.shutdown(socket.SHUT_WR)
        assert read_to_eof(client) == b""
    assert listen.wait() == 0
    assert listen.output == b"one way\n"


def test_port_file_never_follows_a_symlink_another_user_planted(
    spawn: Spawner, public_dir: Path
) -> None:
    """portd wrote FILE.<pid>.tmp with a plain open: nobody could plant that name as a
    symlink to a file root owns, and root's portd clobbered it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to plant the link as another user")
    setpriv = require_tool("setpriv")
    shared = public_dir / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # writable by the other user too (not sticky)
    victim = public_dir / "victim"
    victim.write_text("root's data\n")
    port_file = shared / "port"
    # The shell's pid is the one portd will have after exec: plant the link at that name.
    script = (
        f'{setpriv} --reuid=65534 --regid=65534 --clear-groups ln -s {victim} "{port_file}.$$.tmp"'
        f' && exec "$@"'
    )
    listen = spawn(
        "sh", "-c", script, "sh", *PORTD, "listen", "--port-file", str(port_file), "127.0.0.1:0"
    )
    port = listen.port()
    with tcp_client(port) as client:
        client.sendall(b"x")
    assert listen.wait() == 0, listen.stderr
    assert victim.read_text() == "root's data\n"
    assert not port_file.is_symlink()
    assert port_file.read_text(encoding="ascii") == f"{port}\n"
    assert [p.name for p in shared.iterdir() if not p.is_symlink()] == ["port"]


def test_an_unwritable_port_file_is_one_line_and_exit_64(spawn: Spawner, tmp_path: Path) -> None:
    listen = spawn.portd("listen", "--port-file", str(tmp_path / "missing" / "port"), "127.0.0.1:0")
    assert listen.wait() == 64
    assert listen.lines[-1] == (
        f"portd: --port-file '{tmp_path}/missing/port': cannot write it: No such file or directory"
    )
    assert "Traceback" not in listen.stderr


def served_client(port: int) -> socket.socket | None:
    """A connected client that -k serves, or None when portd refused it with an RST.

    stdin is /dev/null, so portd half-closes each client it serves at once: a served
    client reads EOF, a refused one a reset.
    """
    try:
        client = tcp_client(port)
    except ConnectionResetError:  # reset before connect() returned
        return None
    try:
        client.sendall(b"x")
        if client.recv(1) == b"":
            return client
    except (ConnectionResetError, BrokenPipeError):
        pass
    client.close()
    return None


def test_keep_refuses_clients_past_max_clients_with_a_reset_and_a_line(spawn: Spawner) -> None:
    """-k started a thread per client without bound; past the limit their data was lost."""
    listen = spawn.portd("listen", "-k", "-v", "--max-clients", "2", "127.0.0.1:0")
    port = listen.port()
    first, second = served_client(port), served_client(port)
    assert first is not None
    assert second is not None
    assert served_client(port) is None
    listen.expect(r"^portd: refused 127\.0\.0\.1:\d+: 2 clients already \(--max-clients\)$")
    peer = f"127.0.0.1:{first.getsockname()[1]}"
    first.close()
    listen.expect(f"^connection from {peer} closed$")
    third = served_client(port)  # a place is free again
    assert third is not None
    for client in (second, third):
        client.close()
    listen.expect_output(3)
    listen.interrupt()
    assert listen.wait() == 130
    assert bytes(listen.output) == b"xxx"
    assert "Traceback" not in listen.stderr


def test_keep_at_the_thread_limit_refuses_instead_of_losing_data(
    spawn: Spawner, public_dir: Path
) -> None:
    """At RLIMIT_NPROC the accept thread died and later clients' data vanished."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run portd as a user of its own with a thread limit")
    setpriv, prlimit = require_tool("setpriv"), require_tool("prlimit")
    uid = "61999"  # no other process of this uid runs, so the limit counts portd's alone
    listen = spawn(
        prlimit, "--nproc=6", setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        *PORTD, "listen", "-k", "127.0.0.1:0", cwd=public_dir,
    )  # fmt: skip
    port = listen.port()
    held: list[socket.socket] = []
    try:
        while (client := served_client(port)) is not None:  # each one holds a thread
            held.append(client)
            assert len(held) < 10, f"the thread limit never bit: {listen.stderr}"
        listen.expect(r"^portd: refused 127\.0\.0\.1:\d+: no thread could be started")
        held.pop().close()  # the accept thread lives on: a freed thread serves the next
        deadline = time.monotonic() + 10
        while (client := served_client(port)) is None:
            assert time.monotonic() < deadline, listen.stderr
        held.append(client)
        assert "Traceback" not in listen.stderr
    finally:
        for client in held:
            client.close()
