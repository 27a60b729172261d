"""`portd listen --handler NAME` (and --echo, --http) as a real process: one connection
then exit 0, -k for many, -u until Ctrl-C, and --set's one-line usage errors."""

from __future__ import annotations

import socket

import pytest

from tests.processes import WAIT_S, Spawner, read_to_eof, tcp_client


def served(port: int) -> bool:
    """True when a new client gets its bytes echoed; False when refused, reset or closed."""
    try:
        with tcp_client(port) as client:
            client.sendall(b"?")
            return client.recv(1) == b"?"
    except (ConnectionRefusedError, ConnectionResetError):
        return False


@pytest.mark.parametrize("flag", [("--echo",), ("--handler", "echo")], ids=["echo", "handler"])
def test_serves_one_connection_then_exits_0(spawn: Spawner, flag: tuple[str, ...]) -> None:
    listen = spawn.portd("listen", *flag, "127.0.0.1:0")
    port = listen.port()
    with tcp_client(port) as client:
        client.sendall(b"ping\n")
        assert client.recv(16) == b"ping\n"
        assert not served(port), "accepting stops at the first accept, as with nc -l"
        client.sendall(b"last")
        client.shutdown(socket.SHUT_WR)
        assert read_to_eof(client) == b"last"
    assert listen.wait() == 0
    assert listen.output == b""
    assert listen.lines == [f"listening on 127.0.0.1:{port} (tcp)"]


def test_keep_serves_clients_concurrently_until_ctrl_c(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "-k", "--echo", "127.0.0.1:0")
    port = listen.port()
    clients = [tcp_client(port) for _ in range(4)]
    try:
        for index, client in enumerate(clients):  # every one is served while all are open
            client.sendall(b"client %d" % index)
            assert client.recv(16) == b"client %d" % index
    finally:
        for client in clients:
            client.close()
    listen.interrupt()
    assert listen.wait(timeout=3) == 130
    assert listen.lines == [f"listening on 127.0.0.1:{port} (tcp)"]


def test_udp_echo_serves_until_ctrl_c(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "-u", "--echo", "127.0.0.1:0")
    server = ("127.0.0.1", listen.port())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.settimeout(WAIT_S)
        for data in (b"one", b"two"):
            peer.sendto(data, server)
            assert peer.recvfrom(16) == (data, server)
    listen.interrupt()
    assert listen.wait(timeout=3) == 130
    assert listen.lines == [f"listening on 127.0.0.1:{server[1]} (udp)"]


def test_http_shortcut_with_a_handler_option(spawn: Spawner) -> None:
    """--http is --handler http-hello; --set passes its options (a TOML scalar or text)."""
    listen = spawn.portd("listen", "--http", "--set", "body=set from the shell", "127.0.0.1:0")
    with tcp_client(listen.port()) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = read_to_eof(client)
    assert listen.wait() == 0
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    assert body == b"set from the shell"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--set", "a=1"), "portd: --set needs --handler (or --echo/--http), or -k for a limit"),
        (("--echo", "--set", "novalue"), "portd: --set expects KEY=VALUE, got 'novalue'"),
        (("--echo", "--set", "backlog=0"),
         "portd: backlog = 0: expected an integer from 1 to 65535"),
        (("--echo", "--set", "bind=127.0.0.1:1"),
         "portd: --set bind=...: give the bind as [HOST:]PORT"),
        (("--echo", "--set", "protocol=udp"), "portd: --set protocol=...: give the protocol as -u"),
        (("--handler", "no-such"), "portd: unknown handler 'no-such'; installed handlers: "),
        (("--echo", "--set", "bogus=1"), "portd: bogus = 1: unknown key; allowed keys: "),
    ],
    ids=["no-handler", "no-equals", "bad-value", "bind", "protocol", "unknown-handler", "bad-key"],
)  # fmt: skip
def test_bad_handler_arguments_exit_64_with_one_line(
    spawn: Spawner, args: tuple[str, ...], message: str
) -> None:
    """A bad --set is a usage error (README: 64), reported before anything is bound."""
    listen = spawn.portd("listen", *args, "127.0.0.1:0")
    assert listen.wait() == 64
    assert len(listen.lines) == 1, listen.lines
    assert listen.lines[0].startswith(message)
    assert listen.lines[0] == message or message.endswith(" "), listen.lines


def test_set_keeps_text_for_string_options(spawn: Spawner) -> None:
    """--set body=1 is the text "1", not the TOML integer 1 (body takes a string)."""
    listen = spawn.portd("listen", "--http", "--set", "body=1", "127.0.0.1:0")
    with tcp_client(listen.port()) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = read_to_eof(client)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert reply.endswith(b"\r\n\r\n1")
    assert listen.wait() == 0
