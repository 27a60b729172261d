"""The http-hello corpus: every stored request stream gets its expected answers, from
the in-memory session (whole and split into small reads, byte-identical) and from a
real daemon over loopback on both event loops."""

from __future__ import annotations

import socket
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.handlers.http_corpus.make_corpus import corpus, manifest
from tests.handlers.test_http_hello import check_responses, open_session, read_responses
from tests.support import Daemon, write_config

CORPUS = Path(__file__).resolve().parent / "http_corpus"
EXPECTED: dict[str, int | list[int] | str] = tomllib.loads(
    (CORPUS / "expected.toml").read_text(encoding="utf-8")
)
FILES = sorted(EXPECTED)


def expected_statuses(name: str) -> list[int]:
    want = EXPECTED[name]
    if want == "close":
        return []
    return [want] if isinstance(want, int) else list(want)  # type: ignore[arg-type]


def serve_in_memory(data: bytes, chunk: int) -> bytes:
    """Feed ``data`` in reads of ``chunk`` bytes, then EOF; what the session wrote.

    At EOF the session must let the server close (return False): nothing it was sent
    is left unanswered, since no peer here stops reading.
    """
    session, conn, _ = open_session()
    for start in range(0, len(data), chunk):
        session.data_received(data[start : start + chunk])
    assert session.eof_received() is False
    return bytes(conn.written)


def test_the_corpus_is_large_and_matches_its_generator() -> None:
    cases = corpus()
    assert len(cases) >= 150
    assert sorted(path.name for path in CORPUS.glob("*.http")) == sorted(cases) == FILES
    for name, (data, _) in cases.items():
        assert (CORPUS / name).read_bytes() == data, name
    assert (CORPUS / "expected.toml").read_text(encoding="utf-8") == manifest(cases)


@pytest.mark.parametrize("name", FILES)
def test_in_memory_answers_match_and_do_not_depend_on_how_reads_split(name: str) -> None:
    data = (CORPUS / name).read_bytes()
    whole = serve_in_memory(data, max(len(data), 1))
    assert [r.status for r in check_responses(whole)] == expected_statuses(name)
    assert serve_in_memory(data, 1 if len(data) < 4096 else 97) == whole


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def corpus_port(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """One daemon serving http-hello for the whole module, per event loop."""
    config = textwrap.dedent(f"""
        [daemon]
        loop = "{request.param}"
        [[listener]]
        name = "web"
        bind = "127.0.0.1:0"
        handler = "http-hello"
    """)
    path = write_config(tmp_path_factory.mktemp("corpus"), config)
    daemon = Daemon(["-c", str(path)])
    try:
        yield daemon.ready()["web"]
    finally:
        daemon.stop()


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, and read until the daemon closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("name", FILES)
def test_a_real_daemon_answers_the_same(corpus_port: int, name: str) -> None:
    received = exchange(corpus_port, (CORPUS / name).read_bytes())
    assert [r.status for r in read_responses(received)] == expected_statuses(name)
