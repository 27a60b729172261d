"""The TLS fixtures against the clients people use: Python's ssl, httpx, curl and
``openssl s_client``; every TLS fault gives each client the error it is named for."""

from __future__ import annotations

import socket
import ssl
import subprocess
import warnings

import httpx
import pytest

from portd.testing import Server, ServerFactory
from tests.support import require_tool

PY_ERRORS = {  # fixture -> what Python's ssl raises, and its text
    "tls_expired_server": (ssl.SSLCertVerificationError, "certificate has expired"),
    "tls_not_yet_valid_server": (ssl.SSLCertVerificationError, "certificate is not yet valid"),
    "tls_wrong_host_server": (
        ssl.SSLCertVerificationError,
        "Hostname mismatch, certificate is not valid for 'localhost'.",
    ),
    "tls_self_signed_server": (ssl.SSLCertVerificationError, "self-signed certificate"),
    "tls_untrusted_ca_server": (
        ssl.SSLCertVerificationError,
        "unable to get local issuer certificate",
    ),
    "tls_handshake_stall_server": (TimeoutError, "The handshake operation timed out"),
    "tls_reset_during_handshake_server": (ConnectionResetError, "Connection reset by peer"),
    "tls10_only_server": (ssl.SSLError, "EOF occurred in violation of protocol"),
}
# curl says a stalled handshake timed out in one of two ways, both exit 28: its
# transfer timer ("Operation timed out after N milliseconds") or its TLS connect
# loop ("SSL connection timeout"), whichever sees the deadline first.
CURL_TIMEOUTS = ("timed out after", "SSL connection timeout")
CURL_ERRORS: dict[str, tuple[int, str | tuple[str, ...]]] = {
    # fixture -> curl's exit status and the words of its message (or its alternatives)
    "tls_expired_server": (60, "SSL certificate problem: certificate has expired"),
    "tls_not_yet_valid_server": (60, "SSL certificate problem: certificate is not yet valid"),
    "tls_wrong_host_server": (
        60,
        "no alternative certificate subject name matches target host name 'localhost'",
    ),
    "tls_self_signed_server": (60, "SSL certificate problem: self-signed certificate"),
    "tls_untrusted_ca_server": (60, "SSL certificate problem: unable to get local issuer"),
    "tls_handshake_stall_server": (28, CURL_TIMEOUTS),
    "tls_reset_during_handshake_server": (35, "Connection reset by peer"),
    "tls10_only_server": (35, ""),
}


def fault_timeout_s(fixture: str) -> float:
    """The client's deadline: short where the timeout is the fault under test; long
    elsewhere, so a loaded host never turns a certificate error into a timeout."""
    return 0.5 if fixture == "tls_handshake_stall_server" else 10.0


def handshake(server: Server, context: ssl.SSLContext | None = None, timeout: float = 10) -> str:
    context = context or server.ssl_context()
    with (
        socket.create_connection(server.address, timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as client,
    ):
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"
        return str(client.version())


def test_the_valid_fixtures_serve_tls(tls_echo_server: Server, tls_http_server: Server) -> None:
    assert handshake(tls_echo_server) in ("TLSv1.2", "TLSv1.3")
    assert tls_http_server.url.startswith("https://127.0.0.1:")
    response = httpx.get(tls_http_server.url + "/", verify=tls_http_server.ssl_context())
    assert (response.status_code, response.text) == (200, "Hello from portd\n")
    assert response.http_version == "HTTP/1.1"


@pytest.mark.parametrize("fixture", list(PY_ERRORS))
def test_each_fault_raises_what_python_ssl_raises(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue(fixture)
    kind, text = PY_ERRORS[fixture]
    with pytest.raises(kind) as caught:
        handshake(server, timeout=fault_timeout_s(fixture))
    assert text in str(caught.value)
    if kind is ssl.SSLCertVerificationError:
        assert getattr(caught.value, "verify_message", None) == text


def test_httpx_names_the_expired_certificate(tls_expired_server: Server) -> None:
    with pytest.raises(httpx.ConnectError, match="certificate has expired"):
        httpx.get(tls_expired_server.url, verify=tls_expired_server.ssl_context())


@pytest.mark.needs_tool("curl")
@pytest.mark.parametrize("fixture", list(CURL_ERRORS))
def test_each_fault_gives_curl_its_exit_status(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    curl = require_tool("curl")
    server: Server = request.getfixturevalue(fixture)
    done = subprocess.run(
        [
            curl,
            "-sS",
            "--max-time",
            str(fault_timeout_s(fixture)),
            "--cacert",
            server.ca_path,
            f"https://localhost:{server.port}/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    code, words = CURL_ERRORS[fixture]
    assert done.returncode == code, done.stderr
    alternatives = (words,) if isinstance(words, str) else words
    assert any(word in done.stderr for word in alternatives), done.stderr


@pytest.mark.needs_tool("curl")
def test_curl_with_cacert_gets_the_page(tls_http_server: Server) -> None:
    curl = require_tool("curl")
    done = subprocess.run(
        [
            curl,
            "-sS",
            "--cacert",
            tls_http_server.ca_path,
            "-w",
            " %{http_version}",
            f"https://localhost:{tls_http_server.port}/",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "Hello from portd\n 1.1"), done.stderr


def test_mutual_tls_takes_an_issued_client_certificate(mtls_echo_server: Server) -> None:
    card = mtls_echo_server.issue_client_cert("alice")
    assert handshake(mtls_echo_server, mtls_echo_server.ssl_context(card))
    with pytest.raises((ssl.SSLError, ConnectionResetError, AssertionError)):
        handshake(mtls_echo_server)  # no certificate: never echoed


def test_a_client_that_lowers_its_level_speaks_tls10(tls10_only_server: Server) -> None:
    """What ``tls1.0-only`` means on this OpenSSL: TLS 1.0 at security level 0."""
    context = tls10_only_server.ssl_context()
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    assert handshake(tls10_only_server, context) == "TLSv1"


def s_client(server: Server, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    openssl = require_tool("openssl")
    return subprocess.run(
        [
            openssl,
            "s_client",
            "-connect",
            f"127.0.0.1:{server.port}",
            "-servername",
            "localhost",
            "-CAfile",
            server.ca_path,
            "-verify_return_error",
            *args,
        ],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=False,
    )


@pytest.mark.needs_tool("openssl")
def test_openssl_s_client_sees_version_alpn_and_fingerprint(tls_http_server: Server) -> None:
    done = s_client(tls_http_server, "-tls1_3", "-alpn", "http/1.1", "-brief")
    assert done.returncode == 0, done.stderr
    assert b"Protocol version: TLSv1.3" in done.stderr
    assert b"Verification: OK" in done.stderr
    shown = s_client(tls_http_server, "-alpn", "http/1.1").stdout
    assert b"ALPN protocol: http/1.1" in shown
    pem = shown[
        shown.index(b"-----BEGIN CERTIFICATE-----") : shown.index(b"-----END CERTIFICATE-----") + 25
    ]
    served = subprocess.run(
        [require_tool("openssl"), "x509", "-noout", "-fingerprint", "-sha256"],
        input=pem,
        capture_output=True,
        timeout=30,
        check=True,
    ).stdout.decode()
    from portd.tls.certs import pem_fingerprint

    assert served.strip() == f"sha256 Fingerprint={pem_fingerprint(pem)}"


@pytest.mark.needs_tool("openssl")
def test_openssl_s_client_with_a_client_certificate(portd_server: ServerFactory) -> None:
    server = portd_server("http-hello", tls=True, tls_client_auth=True)
    card = server.issue_client_cert("bob")
    request = b"GET / HTTP/1.0\r\n\r\n"
    done = s_client(server, "-cert", card.cert_path, "-key", card.key_path, "-quiet", stdin=request)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"HTTP/1.1 200 OK\r\n")
    refused = s_client(server, "-quiet", stdin=request)  # no certificate: no answer
    assert b"HTTP/1.1" not in refused.stdout
