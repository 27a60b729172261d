"""`portd listen --exec` / `-e` and `--sh-exec` / `-c` as a real process: a program per
client (one, or with -k one each until Ctrl-C, like ncat --exec), the words split as a
shell would with no shell run, the warning when others can reach the port, and the
one-line refusals."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from tests.processes import WAIT_S, Spawner, read_to_eof, tcp_client


def running(pid: int) -> bool:
    """Not gone and not a zombie (a reaper elsewhere may not have reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def talk(port: int, data: bytes) -> bytes:
    with tcp_client(port) as client:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        return read_to_eof(client)


@pytest.mark.parametrize("flag", ["-e", "--exec"])
def test_one_client_gets_the_program_then_listen_exits_0(spawn: Spawner, flag: str) -> None:
    listen = spawn.portd("listen", flag, "tr a-z A-Z", "127.0.0.1:0")
    port = listen.port()
    assert talk(port, b"hello\n") == b"HELLO\n"
    assert listen.wait() == 0
    assert listen.lines == [f"listening on 127.0.0.1:{port} (tcp)"]  # loopback: no warning
    assert listen.output == b""


def test_words_are_split_as_a_shell_would_and_no_shell_runs(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "-e", "printf '%s|' 'two words' $HOME;", "127.0.0.1:0")
    assert talk(listen.port(), b"") == b"two words|$HOME;|"


def test_sh_exec_runs_the_command_under_sh(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "-c", 'echo "$PROTO $TCPLOCALPORT"', "127.0.0.1:0")
    port = listen.port()
    assert talk(port, b"") == f"TCP {port}\n".encode()


def test_k_runs_one_program_per_client_at_once_until_ctrl_c(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "-lke", "sh -c 'read x; echo $x $$'", "127.0.0.1:0")
    port = listen.port()
    clients = [tcp_client(port) for _ in range(3)]
    answers = []
    try:
        for index, client in enumerate(clients):
            client.sendall(b"c%d\n" % index)
        answers = [read_to_eof(client).split() for client in clients]
    finally:
        for client in clients:
            client.close()
    assert [word for word, _pid in answers] == [b"c0", b"c1", b"c2"]
    assert len({pid for _word, pid in answers}) == 3
    listen.interrupt()
    assert listen.wait() == 130


def test_ctrl_c_ends_the_programs_still_running(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "-k", "-e", "sh -c 'echo $$; exec sleep 60'", "127.0.0.1:0")
    with tcp_client(listen.port()) as client:
        pid = int(client.recv(32))
        listen.interrupt()
        assert listen.wait() == 130
        assert read_to_eof(client) == b""
    assert not running(pid)


def test_a_port_others_can_reach_is_said_once(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "-4", "-e", "cat", "0")
    port = listen.port()
    assert listen.lines[0] == (
        f"portd: warning: anyone who can reach this host on tcp port {port} can now run cat"
    )
    assert talk(port, b"x") == b"x"
    assert listen.wait() == 0


def test_udp_exec_lets_one_program_read_the_socket(spawn: Spawner) -> None:
    code = "import socket; s = socket.socket(fileno=0); d, p = s.recvfrom(99); s.sendto(d * 2, p)"
    listen = spawn.portd("listen", "-u", "-e", f'{sys.executable} -c "{code}"', "127.0.0.1:0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.settimeout(WAIT_S)
        peer.sendto(b"ab", ("127.0.0.1", listen.port()))
        assert peer.recvfrom(99)[0] == b"abab"
    listen.interrupt()
    assert listen.wait() == 130


def test_listen_u_exec_names_the_unix_peer(spawn: Spawner, tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    listen = spawn.portd("listen", "-U", str(path), "-c", 'echo "$PROTO $UNIXREMOTEPID"')
    listen.expect(r"^listening on unix:")
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(WAIT_S)
        client.connect(str(path))
        assert read_to_eof(client) == f"UNIX {os.getpid()}\n".encode()
    assert listen.wait() == 0


def test_listen_tls_exec_relays_and_the_program_outlives_the_handshake(spawn: Spawner) -> None:
    import ssl

    listen = spawn.portd("listen", "--tls", "-c", 'read x; sleep 0.3; echo "got $x"', "127.0.0.1:0")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # its ephemeral cert
    with (
        tcp_client(listen.port()) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as client,
    ):
        client.sendall(b"hello\n")
        answer = b""
        while chunk := client.recv(99):
            answer += chunk
    assert answer == b"got hello\n"
    assert listen.wait() == 0


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["-e", "a 'b", "0"], "portd: --exec \"a 'b\": No closing quotation; it is split into "
         "words as a shell would, and no shell runs (for one, use --sh-exec)"),
        (["-e", "", "0"], "portd: --exec: no program given"),
        (["-e", "no-such-program-here", "0"], "portd: command: 'no-such-program-here' is not "
         "an executable file in PATH (/usr/local/bin:/usr/bin:/bin)"),
        (["-e", "cat", "--set", "command=x", "0"],
         "portd: --set command=...: --exec or --sh-exec gives it already"),
        (["-e", "cat", "--echo", "0"],
         "portd listen: error: argument --echo: not allowed with argument -e/--exec"),
        (["-e", "cat", "--set", "timeout_s=-1", "0"],
         "portd: timeout_s = -1: expected a number from 0 to 604800"),
    ],
    ids=["quote", "empty", "not-found", "set-command", "two-handlers", "bad-set"],
)  # fmt: skip
def test_bad_exec_arguments_are_one_line_and_exit_64(args: list[str], line: str) -> None:
    from tests.support import run_portd

    done = run_portd("listen", *args)
    assert done.returncode == 64
    assert done.stderr.splitlines()[-1] == line
    assert "Traceback" not in done.stderr


def test_exec_help_names_the_exit_status() -> None:
    from tests.support import run_portd

    shown = run_portd("listen", "--help")
    assert "listen --exec: the one client's program ended, whatever its own status" in (
        " ".join(shown.stdout.split())
    )
