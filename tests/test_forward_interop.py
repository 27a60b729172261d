"""A forward between the real tools users run: nc and socat as clients and as upstreams,
100 MiB byte-exact each way, a half-close that reaches the upstream whose answer still
comes back, and an RST passed on in each direction, seen by the tool on the far side.

The tools listen on port 0 and announce the port (see tests/processes.py); the proxy
is portd.testing.forward() on a kernel-chosen port.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from pathlib import Path

import pytest

from portd.testing import forward
from tests.processes import (
    NC_LISTENING,
    SOCAT_LISTENING,
    WAIT_S,
    Spawner,
    spawn,
    write_payload,
)
from tests.support import require_tool

__all__ = ["spawn"]  # the fixture, for this module

SIZE = 100 << 20
LONG_S = 180.0
PAIRS = pytest.mark.parametrize(("client", "upstream"), [("nc", "socat"), ("socat", "nc")])
LINGER_RESET = struct.pack("ii", 1, 0)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def receiving_upstream(tool: str, saved: Path) -> tuple[list[str], str]:
    if tool == "nc":
        return [require_tool("nc"), "-lvn", "127.0.0.1", "0"], NC_LISTENING
    return [require_tool("socat"), "-d", "-d", "-u", "TCP-LISTEN:0,bind=127.0.0.1",
            f"CREATE:{saved}"], SOCAT_LISTENING  # fmt: skip


def sending_upstream(tool: str, payload: Path) -> tuple[list[str], str]:
    if tool == "nc":  # -N: end its side once the file is sent
        return [require_tool("nc"), "-lNvn", "127.0.0.1", "0"], NC_LISTENING
    return [require_tool("socat"), "-d", "-d", "-u", f"FILE:{payload}",
            "TCP-LISTEN:0,bind=127.0.0.1"], SOCAT_LISTENING  # fmt: skip


def sending_client(tool: str, port: int, payload: Path) -> list[str]:
    if tool == "nc":
        return [require_tool("nc"), "-N", "127.0.0.1", str(port)]
    return [require_tool("socat"), "-u", f"FILE:{payload}", f"TCP:127.0.0.1:{port}"]


def receiving_client(tool: str, port: int, saved: Path) -> list[str]:
    if tool == "nc":  # -d: nothing from stdin; it ends when the proxy ends its side
        return [require_tool("nc"), "-d", "127.0.0.1", str(port)]
    return [require_tool("socat"), "-u", f"TCP:127.0.0.1:{port}", f"CREATE:{saved}"]


@PAIRS
def test_100_mib_from_the_client_reach_the_upstream_byte_exact(
    spawn: Spawner, tmp_path: Path, client: str, upstream: str
) -> None:
    payload, saved = tmp_path / "payload", tmp_path / "saved"
    write_payload(payload, SIZE)
    argv, announced = receiving_upstream(upstream, saved)
    server = spawn(*argv, stdout=saved if upstream == "nc" else None)
    with forward(("127.0.0.1", server.port(announced))) as proxy:
        sender = spawn(*sending_client(client, proxy.port, payload),
                       stdin=payload if client == "nc" else None)  # fmt: skip
        assert sender.wait(LONG_S) == 0, sender.stderr
        assert server.wait(LONG_S) == 0, server.stderr
        (record,) = proxy.wait_connections(1, timeout_s=LONG_S)
    assert (record.bytes_in, record.bytes_out) == (SIZE, 0)
    assert sha256(saved) == sha256(payload)


@PAIRS
def test_100_mib_from_the_upstream_reach_the_client_byte_exact(
    spawn: Spawner, tmp_path: Path, client: str, upstream: str
) -> None:
    payload, saved = tmp_path / "payload", tmp_path / "saved"
    write_payload(payload, SIZE)
    argv, announced = sending_upstream(upstream, payload)
    server = spawn(*argv, stdin=payload if upstream == "nc" else None)
    with forward(("127.0.0.1", server.port(announced))) as proxy:
        receiver = spawn(*receiving_client(client, proxy.port, saved),
                         stdout=saved if client == "nc" else None)  # fmt: skip
        assert receiver.wait(LONG_S) == 0, receiver.stderr
        assert server.wait(LONG_S) == 0, server.stderr
        (record,) = proxy.wait_connections(1, timeout_s=LONG_S)
    assert (record.bytes_in, record.bytes_out) == (0, SIZE)
    assert sha256(saved) == sha256(payload)


def test_ncs_half_close_reaches_socat_whose_answer_still_comes_back(
    spawn: Spawner, tmp_path: Path
) -> None:
    """socat's program reads to EOF before it answers: the answer can only come if nc's
    FIN crossed the proxy, and nc only prints it if the proxy kept the other half open."""
    socat = require_tool("socat")
    server = spawn(socat, "-d", "-d", "TCP-LISTEN:0,bind=127.0.0.1",
                   "SYSTEM:wc -c; echo answered after EOF")  # fmt: skip
    request = tmp_path / "request"
    request.write_bytes(b"x" * 12345)
    with forward(("127.0.0.1", server.port(SOCAT_LISTENING))) as proxy:
        client = spawn(require_tool("nc"), "-N", "127.0.0.1", str(proxy.port), stdin=request,
                       stdout=tmp_path / "answer")  # fmt: skip
        assert client.wait(WAIT_S * 3) == 0, client.stderr
        assert server.wait(WAIT_S * 3) == 0, server.stderr
    assert (tmp_path / "answer").read_bytes().split() == [b"12345", b"answered", b"after", b"EOF"]


def test_a_client_reset_reaches_socat_as_a_reset(spawn: Spawner) -> None:
    """socat 1.7.4 reports a reset as a warning ("Connection reset by peer") and still
    exits 0: its log line is the evidence."""
    server = spawn(require_tool("socat"), "-d", "-d", "-u", "TCP-LISTEN:0,bind=127.0.0.1",
                   "-")  # fmt: skip
    with forward(("127.0.0.1", server.port(SOCAT_LISTENING))) as proxy:
        client = socket.create_connection(proxy.address, timeout=WAIT_S)
        client.sendall(b"some bytes")
        assert server.expect_output(10) == b"some bytes"  # the upstream side is open
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        client.close()
        server.expect("Connection reset by peer")
        server.wait(WAIT_S * 3)


def test_an_upstream_reset_reaches_socat_as_a_reset(spawn: Spawner) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with forward(listener.getsockname()) as proxy:
            client = spawn(require_tool("socat"), "-d", "-u", f"TCP:127.0.0.1:{proxy.port}",
                           "-")  # fmt: skip
            upstream, _ = listener.accept()
            upstream.sendall(b"partial answer")
            assert client.expect_output(14) == b"partial answer"  # both sides are open
            upstream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
            upstream.close()
            client.expect("Connection reset by peer")
            client.wait(WAIT_S * 3)
            (record,) = proxy.wait_connections(1)
    assert (record.bytes_out, record.upstream_ended) == (14, "reset")
