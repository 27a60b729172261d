"""SIGHUP re-reads a forward's upstream TLS files renewed in place (same path, new
bytes), as it does a listener's ``tls_*`` files: new connections use the new context,
live ones go on with theirs, and a renewed file that fails to load keeps the old
context (``reload_failed``). Two real daemons: a TLS echo upstream, and the forward."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from portd.testing.tls import session_authority
from portd.tls.certs import Authority, Issued
from tests.support import Daemon
from tests.tls.files import NAMES, Pair, tls_table, write_pair

StartDaemon = Callable[..., Daemon]
WAIT_S = 10.0


def replace_file(path: Path, data: bytes) -> None:
    """Renew ``path`` as certbot does: a new file renamed over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_bytes(data)
    fresh.replace(path)


class Upstream(NamedTuple):
    daemon: Daemon
    port: int


def start_upstream(start_daemon: StartDaemon, tmp_path: Path, client_auth: bool) -> Upstream:
    """A TLS echo daemon with a leaf of the session CA, requiring a client certificate
    of that CA with ``client_auth``."""
    authority = session_authority()
    pair = write_pair(tmp_path, authority.authority.issue(NAMES), stem="upstream")
    extra = f'tls_client_ca = "{authority.ca_path}"\n' if client_auth else ""
    daemon = start_daemon(tls_table(pair, extra, name="up"))
    return Upstream(daemon, daemon.ready()["up"])


def session_ca(tmp_path: Path) -> Path:
    """A copy of the session CA, for the forward's ``upstream_ca``."""
    ca = tmp_path / "upstream-ca.pem"
    ca.write_bytes(session_authority().authority.cert_pem)
    return ca


def start_forward(start_daemon: StartDaemon, upstream: Upstream, keys: str) -> Daemon:
    """A forward daemon (listener ``fwd``) to ``upstream`` over TLS with ``keys``."""
    return start_daemon(
        f'[[listener]]\nname = "fwd"\nbind = "127.0.0.1:0"\nhandler = "forward"\n'
        f'upstream = "127.0.0.1:{upstream.port}"\nupstream_tls = true\n{keys}'
    )


def echoes(port: int) -> socket.socket:
    """A connection through the forward that echoed once (left open)."""
    client = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    client.sendall(b"ping")
    assert client.recv(4) == b"ping"
    return client


def is_refused(port: int) -> bool:
    """True when a new connection through the forward is reset (its upstream failed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as client:
        client.sendall(b"ping")
        try:
            return client.recv(4) == b""
        except ConnectionResetError:
            return True


def reload(daemon: Daemon) -> dict[str, object]:
    daemon.signal(signal.SIGHUP)
    return daemon.wait_for("reload_complete")


def forward_trusting_a_ca_file(
    start_daemon: StartDaemon, tmp_path: Path
) -> tuple[Daemon, int, Path]:
    """A TLS upstream and a forward that verifies it against ``upstream_ca``: the
    forward daemon, its port and the CA file."""
    upstream = start_upstream(start_daemon, tmp_path, client_auth=False)
    ca = session_ca(tmp_path)
    daemon = start_forward(start_daemon, upstream, f'upstream_ca = "{ca}"\n')
    return daemon, daemon.ready()["fwd"], ca


def test_a_renewed_upstream_ca_is_used_by_new_connections_and_live_ones_go_on(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    daemon, port, ca = forward_trusting_a_ca_file(start_daemon, tmp_path)
    live = echoes(port)
    with live:
        replace_file(ca, Authority("another CA").cert_pem)  # the upstream's CA is not in it
        done = reload(daemon)
        assert (done["changed"], done["sockets_handed_over"]) == (1, 1)
        assert is_refused(port)
        failed = daemon.wait_for("upstream_failed")
        assert "unable to get local issuer certificate" in str(failed["error"])
        live.sendall(b"still here")  # made with the old context: served on
        assert live.recv(10) == b"still here"


def test_a_renewed_upstream_client_certificate_is_shown_by_new_connections(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    upstream = start_upstream(start_daemon, tmp_path, client_auth=True)
    authority = session_authority()
    client = write_pair(tmp_path, authority.authority.issue(["client-one"], client=True), "c")
    daemon = start_forward(start_daemon, upstream, _client_keys(session_ca(tmp_path), client))
    port = daemon.ready()["fwd"]
    with echoes(port) as live:
        renewed = authority.authority.issue(["client-two"], client=True)
        _renew_pair(client, renewed)
        done = reload(daemon)
        assert (done["changed"], done["sockets_handed_over"]) == (1, 1)
        echoes(port).close()
        live.sendall(b"still here")
        assert live.recv(10) == b"still here"
    assert _client_subjects(upstream.daemon) == ["CN=client-one", "CN=client-two"]


def _client_keys(ca: Path, pair: Pair) -> str:
    return f'upstream_ca = "{ca}"\nupstream_cert = "{pair.cert}"\nupstream_key = "{pair.key}"\n'


def _renew_pair(pair: Pair, issued: Issued) -> None:
    replace_file(pair.cert, issued.cert_pem)
    replace_file(pair.key, issued.key_pem)


def _client_subjects(upstream: Daemon) -> list[str]:
    """The client certificates the upstream daemon saw (stopping it closes every
    connection, so each has its ``connection_closed`` line)."""
    upstream.signal(signal.SIGTERM)
    assert upstream.wait() == 0
    closed = [e for e in upstream.events if e.get("event") == "connection_closed"]
    return sorted(str(e.get("tls_client")) for e in closed)


def test_a_renewed_upstream_ca_that_fails_to_load_keeps_the_old_context(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    daemon, port, ca = forward_trusting_a_ca_file(start_daemon, tmp_path)
    replace_file(ca, b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_for("reload_failed")
    assert f'upstream_ca = "{ca}": no PEM certificate could be read' in str(failed["error"])
    assert "\n" not in str(failed["error"])
    echoes(port).close()  # the old context still verifies the upstream


@pytest.mark.parametrize("key", ["upstream_ca", "upstream_cert"])
def test_an_unchanged_upstream_file_keeps_the_listener_as_it_is(
    start_daemon: StartDaemon, tmp_path: Path, key: str
) -> None:
    upstream = start_upstream(start_daemon, tmp_path, client_auth=True)
    authority = session_authority()
    client = write_pair(tmp_path, authority.authority.issue(["client-one"], client=True), "c")
    ca = session_ca(tmp_path)
    daemon = start_forward(start_daemon, upstream, _client_keys(ca, client))
    port = daemon.ready()["fwd"]
    path = ca if key == "upstream_ca" else client.cert
    replace_file(path, path.read_bytes())  # a new file, the same bytes: nothing to reload
    done = reload(daemon)
    assert (done["changed"], done["sockets_handed_over"]) == (0, 0)
    echoes(port).close()
