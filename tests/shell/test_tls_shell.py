"""``--tls`` for listen and connect, and ``portd cert``: against each other, the test
fixtures, ncat --ssl (both directions), curl and openssl; a verification failure is
one line with OpenSSL's reason and exit 1; a file that cannot be loaded is 78."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from portd.testing import Server, ServerFactory
from tests.processes import Spawner, read_to_eof
from tests.support import require_tool, run_portd

FINGERPRINT = r"SHA-256 fingerprint ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})$"


def test_listen_tls_and_connect_tls_relay_both_ways(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "--tls", "-v", "127.0.0.1:0", stdin=subprocess.PIPE)
    pinned = listen.expect(
        r"^tls: ephemeral self-signed certificate for localhost, "
        r"127\.0\.0\.1, valid 1 day, " + FINGERPRINT
    )[1]
    port = listen.port()
    connect = spawn.portd(
        "connect", "--tls", "--insecure", "-v", "127.0.0.1", str(port), stdin=subprocess.PIPE
    )
    connect.expect(rf"^tls: TLSv1\.3 \S+, ALPN none, peer CN=localhost, SHA-256 {pinned}$")
    listen.expect(r"^tls: TLSv1\.3 \S+, ALPN none, no peer certificate$")
    connect.write(b"to the listener\n")
    assert listen.expect_output(16) == b"to the listener\n"
    listen.write(b"to the connector\n")
    assert connect.expect_output(17) == b"to the connector\n"
    connect.close_stdin()
    listen.close_stdin()
    assert (listen.wait(), connect.wait()) == (0, 0)
    warnings = [line for line in connect.lines if "--insecure" in line]
    assert warnings == [
        "portd: warning: --insecure: the server's certificate and name are not checked"
    ]


def test_connect_tls_verifies_against_ca(spawn: Spawner, tls_echo_server: Server) -> None:
    port = str(tls_echo_server.port)
    connect = spawn.portd(
        "connect",
        "--tls",
        "--ca",
        tls_echo_server.ca_path,
        "-v",
        "localhost",
        port,
        stdin=subprocess.PIPE,
    )
    connect.expect(r"^tls: TLSv1\.3 \S+, ALPN none, peer CN=localhost, SHA-256 [0-9A-F:]{95}$")
    connect.write(b"echo me")
    assert connect.expect_output(7) == b"echo me"
    connect.close_stdin()
    assert connect.wait() == 0


@pytest.mark.parametrize(
    ("fixture", "reason"),
    [
        ("tls_expired_server", "certificate has expired"),
        ("tls_self_signed_server", "self-signed certificate"),
        ("tls_wrong_host_server", "Hostname mismatch, certificate is not valid for 'localhost'."),
    ],
)
def test_a_certificate_that_does_not_verify_is_one_line_and_exit_1(
    fixture: str, reason: str, request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue(fixture)
    done = run_portd("connect", "--tls", "--ca", server.ca_path, "localhost", str(server.port))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (f"portd: TLS handshake with localhost:{server.port} failed: {reason}\n")


def test_the_system_store_does_not_trust_the_test_ca(tls_echo_server: Server) -> None:
    done = run_portd("connect", "--tls", "localhost", str(tls_echo_server.port))
    assert done.returncode == 1
    assert done.stderr.endswith("failed: unable to get local issuer certificate\n")


def test_servername_is_the_name_sent_and_checked(tls_wrong_host_server: Server) -> None:
    server = tls_wrong_host_server
    done = run_portd(
        "connect",
        "--tls",
        "--ca",
        server.ca_path,
        "--servername",
        "wrong-host.invalid",
        "127.0.0.1",
        str(server.port),
        input="sni\n",
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "sni\n", "")


def test_client_certificates(portd_server: ServerFactory, tmp_path: Path) -> None:
    server = portd_server("echo", tls=True, tls_client_auth=True)
    card = server.issue_client_cert("carol")
    done = run_portd(
        "connect",
        "--tls",
        "--ca",
        server.ca_path,
        "--cert",
        card.cert_path,
        "--key",
        card.key_path,
        "localhost",
        str(server.port),
        input="mtls\n",
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "mtls\n", "")
    (record,) = server.wait_connections(1)
    assert record.bytes_in == 5


def test_unloadable_files_exit_78(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    done = run_portd("connect", "--tls", "--ca", str(missing), "127.0.0.1", "9")
    assert done.returncode == 78
    assert done.stderr == (
        f"portd: --ca {missing}: cannot read: No such file or directory (errno 2)\n"
    )
    done = run_portd("listen", "--tls", "--cert", str(missing), "127.0.0.1:0")
    assert done.returncode == 78
    assert done.stderr.endswith(
        f"--cert {missing}: cannot read: No such file or directory (errno 2)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["connect", "--ca", "x.pem", "127.0.0.1", "9"], "--ca: give --tls too"),
        (["listen", "--tls", "-u", "127.0.0.1:0"], "--tls needs a stream"),
        (["connect", "--tls", "-z", "127.0.0.1", "9"], "-z only checks that a port accepts"),
    ],
)
def test_flags_that_do_not_go_together_exit_64(args: list[str], message: str) -> None:
    done = run_portd(*args)
    assert done.returncode == 64
    assert message in done.stderr


def test_a_failed_handshake_keeps_listen_listening(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "--tls", "127.0.0.1:0")
    port = listen.port()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert read_to_eof(plain) == b""
    listen.expect(r"^portd: TLS handshake with 127\.0\.0\.1:\d+ failed: http request$")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as client,
    ):
        client.sendall(b"second try")
        client.unwrap()
    assert listen.wait() == 0
    assert listen.output == b"second try"


@pytest.mark.needs_tool("ncat")
def test_ncat_ssl_client_to_portd_listen(spawn: Spawner, tmp_path: Path) -> None:
    ncat = require_tool("ncat")
    assert run_portd("cert", "--out", str(tmp_path), "localhost").returncode == 0
    listen = spawn.portd(
        "listen",
        "--tls",
        "--cert",
        str(tmp_path / "cert.pem"),
        "--key",
        str(tmp_path / "key.pem"),
        "127.0.0.1:0",
    )
    port = listen.port()
    sent = subprocess.run(
        [
            ncat,
            "--ssl",
            "--ssl-verify",
            "--ssl-trustfile",
            str(tmp_path / "ca.pem"),
            "--send-only",
            "localhost",
            str(port),
        ],
        input=b"from ncat\n",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr
    assert listen.wait() == 0
    assert listen.output == b"from ncat\n"


@pytest.mark.needs_tool("ncat")
def test_portd_connect_to_ncat_ssl_listen(spawn: Spawner, tmp_path: Path) -> None:
    ncat = require_tool("ncat")
    assert run_portd("cert", "--out", str(tmp_path), "localhost").returncode == 0
    with socket.socket() as hold:  # ncat takes a port number: hold one, free it for ncat
        hold.bind(("127.0.0.1", 0))
        port = hold.getsockname()[1]
    server = spawn(
        ncat,
        "--ssl",
        "--ssl-cert",
        str(tmp_path / "cert.pem"),
        "--ssl-key",
        str(tmp_path / "key.pem"),
        "-l",
        "-v",
        "127.0.0.1",
        str(port),
        stdin=subprocess.PIPE,
    )
    server.expect(r"Listening on 127\.0\.0\.1:\d+")
    connect = spawn.portd(
        "connect",
        "--tls",
        "--ca",
        str(tmp_path / "ca.pem"),
        "localhost",
        str(port),
        stdin=subprocess.PIPE,
    )
    connect.write(b"from portd\n")
    assert server.expect_output(11) == b"from portd\n"
    server.write(b"from ncat\n")
    assert connect.expect_output(10) == b"from ncat\n"
    server.close_stdin()
    connect.close_stdin()
    assert connect.wait() == 0


def test_portd_cert_writes_a_ca_and_a_leaf_curl_trusts(
    tmp_path: Path, start_daemon: object
) -> None:
    done = run_portd("cert", "--out", str(tmp_path), "localhost", "127.0.0.1", "::1")
    assert done.returncode == 0, done.stderr
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"ca.pem": 0o644, "ca-key.pem": 0o600, "cert.pem": 0o644, "key.pem": 0o600}
    ca = (tmp_path / "ca.pem").read_bytes()
    again = run_portd("cert", "--out", str(tmp_path), "other.test")
    assert again.returncode == 0
    assert (tmp_path / "ca.pem").read_bytes() == ca  # one CA per directory, reused
    assert "a new CA" not in again.stdout
    text = subprocess.run(
        [require_tool("openssl"), "x509", "-noout", "-text", "-in", str(tmp_path / "cert.pem")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert "DNS:other.test" in text
    assert "prime256v1" in text or "P-256" in text
    bad = run_portd("cert", "--out", str(tmp_path), "not a name")
    assert (bad.returncode, bad.stderr) == (
        64,
        "portd: 'not a name' is neither a host name nor an IP address\n",
    )
    unwritable = run_portd("cert", "--out", str(tmp_path / "missing" / "deeper"), "x.test")
    assert unwritable.returncode == 73
    assert re.fullmatch(r"portd: cannot create .*: No such file or directory\n", unwritable.stderr)


@pytest.mark.needs_tool("curl")
def test_listen_tls_http_serves_https(spawn: Spawner, tmp_path: Path) -> None:
    assert run_portd("cert", "--out", str(tmp_path), "localhost").returncode == 0
    listen = spawn.portd(
        "listen",
        "--tls",
        "--cert",
        str(tmp_path / "cert.pem"),
        "--key",
        str(tmp_path / "key.pem"),
        "--http",
        "127.0.0.1:0",
    )
    port = listen.port()
    done = subprocess.run(
        [
            require_tool("curl"),
            "-sS",
            "--cacert",
            str(tmp_path / "ca.pem"),
            f"https://localhost:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "Hello from portd\n"), done.stderr
    assert listen.wait() == 0


def test_a_failed_handshake_keeps_listen_tls_handler_listening(spawn: Spawner) -> None:
    listen = spawn.portd("listen", "--tls", "--echo", "127.0.0.1:0")
    port = listen.port()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert read_to_eof(plain) == b""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as client,
    ):
        client.sendall(b"echo")
        assert client.recv(4) == b"echo"
    assert listen.wait() == 0
