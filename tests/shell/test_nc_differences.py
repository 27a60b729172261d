"""Where portd takes more than OpenBSD nc (``HOST:PORT``, ``listen -k --set`` limits) or
refuses on purpose: each refusal is one line naming the option and what to type instead,
exit 64; nothing is bound or sent first."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.processes import WAIT_S, Spawner, read_to_eof, tcp_client


@pytest.fixture
def server() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(WAIT_S)
    return sock


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "[127.0.0.1]:{port}"])
def test_connect_takes_host_colon_port(spawn: Spawner, server: socket.socket, form: str) -> None:
    """nc says "missing port number"; portd reads it as HOST PORT."""
    with server:
        target = form.format(port=server.getsockname()[1])
        client = spawn.portd("connect", target, stdin=subprocess.PIPE)
        client.write(b"hi")
        client.close_stdin()
        conn, _ = server.accept()
        with conn:
            assert read_to_eof(conn) == b"hi"
    assert client.wait() == 0


def test_an_option_before_the_words_is_not_misreported(spawn: Spawner) -> None:
    """`connect -p 40000 127.0.0.1 1` used to say "unrecognized arguments: -p 1"."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))  # bound, never listening: refused, and nobody takes it
        port = str(held.getsockname()[1])
        client = spawn.portd("connect", "-w", "5", "127.0.0.1", port)
        assert client.wait() == 1
    assert client.lines == [
        f"portd: connect to 127.0.0.1:{port} (tcp) failed: connection refused: nothing "
        "listens there, or a firewall rejects it"
    ]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["connect", "-e", "/bin/sh", "127.0.0.1", "1"],
         "portd connect: error: unknown option -e: connect runs no program; to run one for "
         "each client that connects: portd listen --exec 'PROG ARGS' PORT"),
        (["listen", "-lvx", "0"],
         "portd listen: error: unknown option -x (in -lvx): portd connects directly; it has no "
         "proxy support"),
        (["listen", "-Q", "0"], "portd listen: error: unknown option -Q"),
        (["connect", "--bogus", "127.0.0.1", "1"], "portd connect: error: unknown option --bogus"),
        (["connect", "-l", "127.0.0.1", "1"],
         "portd connect: error: unknown option -l: to listen, use portd listen"),
        (["listen", "-z", "0"],
         "portd listen: error: unknown option -z: -z checks a port without sending: portd "
         "connect -z HOST PORT (or portd scan HOST PORTS)"),
    ],
    ids=["exec-in-connect", "in-a-bundle", "unknown", "long", "l-in-connect", "z-in-listen"],
)  # fmt: skip
def test_unknown_options_are_named_with_what_to_type(
    spawn: Spawner, args: list[str], line: str
) -> None:
    process = spawn.portd(*args)
    assert process.wait() == 64
    assert process.lines[0].startswith(f"usage: portd {args[0]} ")
    assert process.lines[-1] == line
    assert process.output == b""


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["connect", "-zu", "127.0.0.1", "53"],
         "portd: -z with -u: UDP has no handshake, so portd cannot tell an open port from a "
         "filtered one (nc guesses); send a datagram with portd connect -u and read the answer"),
        (["listen", "-p", "0", "127.0.0.1", "0"],
         "portd: the port is given twice: -p PORT and PORT; give one"),
        (["listen", "-s", "127.0.0.1", "127.0.0.1", "0"],
         "portd: the address is given twice: -s ADDR and HOST; give one"),
        (["listen", "-n", "localhost", "0"],
         "portd: -n: 'localhost' is not a numeric address (no DNS lookup with -n)"),
        (["connect", "::1"],
         "portd: no port in '::1': expected HOST PORT or HOST:PORT; an IPv6 address: "
         "[::1]:PORT or ::1 PORT"),
        (["listen", "-N", "--close-on-eof", "0"],
         "portd: -N half-closes when stdin ends, --close-on-eof closes: give one"),
        (["listen", "-k", "--set", "idle_timeout_s=5", "0"],
         "portd: --set idle_timeout_s: listen -k without a handler takes max_connections, "
         "max_connections_per_source, connection_rate, connection_burst, allow, deny; handler "
         "options need --handler; -w SECS closes idle clients"),
        (["listen", "-k", "--set", "max_connections=0", "0"],
         "portd: --set max_connections=0: expected an integer from 1 to 1000000"),
    ],
    ids=["z-udp", "port-twice", "host-twice", "numeric", "bare-ipv6", "N-and-close",
         "stdio-set-key", "stdio-set-value"],
)  # fmt: skip
def test_refusals_are_one_line_and_64(spawn: Spawner, args: list[str], line: str) -> None:
    process = spawn.portd(*args)
    assert process.wait() == 64
    assert process.lines == [line]


def test_listen_k_with_stdio_honours_max_connections(spawn: Spawner) -> None:
    """-lk --set max_connections=1: a second client is refused at once with an RST (an EOF
    could pass for an empty transfer), while the first is served; once the first leaves,
    the next one is served."""
    listen = spawn.portd("listen", "-lk", "--set", "max_connections=1", "-v", "127.0.0.1:0")
    port = listen.port()
    with tcp_client(port) as first:
        first.sendall(b"one")
        listen.expect_output(3)
        # The RST comes at connect() or at the first read.
        with pytest.raises(ConnectionResetError), tcp_client(port) as second:
            read_to_eof(second)
        listen.expect(r"^portd: refused 127\.0\.0\.1:\d+: max_connections$")
    listen.expect(r"^connection from 127\.0\.0\.1:\d+ closed$")
    with tcp_client(port) as third:
        third.sendall(b"three")
        assert listen.expect_output(8) == b"onethree"
    listen.interrupt()
    assert listen.wait() == 130
