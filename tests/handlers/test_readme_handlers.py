"""README's "Writing a handler" examples run as written: the callback handler and the
coroutine handler serve real connections, and the kit example passes under pytest."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest

from portd.testing import serve

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[2]
SECTION = "### Writing a handler"


def examples() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def handlers() -> dict[str, Any]:
    """The handler classes the section defines, by class name."""
    callback, coroutine, _kit = examples()
    namespace: dict[str, Any] = {}
    exec(compile(callback + "\n" + coroutine, "README.md", "exec"), namespace)  # noqa: S102
    return namespace


def roundtrip(address: Any, data: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as client:
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_callback_handler_serves_and_closes_once_its_limit_is_spent() -> None:
    with (
        serve(handlers()["UpperHandler"], limit=5) as server,
        socket.create_connection(server.address, timeout=10) as client,
    ):
        client.sendall(b"hello")  # the whole limit: the server closes, unasked
        assert client.recv(64) == b"HELLO"
        assert client.recv(64) == b""


def test_the_coroutine_handler_serves_until_the_peer_half_closes() -> None:
    with serve(handlers()["UpperLines"]) as server:
        assert roundtrip(server.address, b"one\ntwo\n") == b"ONE\nTWO\n"


def test_the_kit_example_passes(pytester: pytest.Pytester) -> None:
    callback, _coroutine, kit = examples()
    pytester.makeini(
        "[pytest]\naddopts = -p no:cacheprovider -p no:hypothesispytest\n"
        "asyncio_default_fixture_loop_scope = function\n"
    )
    pytester.makepyfile(test_kit=callback + "\n" + kit)
    result = pytester.runpytest_subprocess()
    assert result.ret == 0, result.stdout.str()
    assert result.parseoutcomes()["passed"] == 1
