"""Fixtures shared by every test module."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support import Daemon, write_config


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture(autouse=True, scope="session")
def _private_runtime_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A daemon started by hand keeps its control socket under $XDG_RUNTIME_DIR/portd: here
    a directory of this test run, so tests neither litter the host's nor meet another run's."""
    path = tmp_path_factory.mktemp("runtime")
    path.chmod(0o700)
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_RUNTIME_DIR", str(path))
    yield
    patch.undo()


HAS_IPV6 = _has_ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="this host has no IPv6 loopback")


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start ``portd serve`` on a config text; every daemon is killed at teardown."""
    started: list[Daemon] = []

    def start(config: str, *args: str, prefix: Sequence[str] = (), **popen: Any) -> Daemon:
        path = write_config(tmp_path, config, name=f"portd-{len(started)}.toml")
        daemon = Daemon(["-c", str(path), *args], prefix=prefix, **popen)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """In-process async tests run on both event loops portd supports."""
    backend: tuple[str, dict[str, Any]] = request.param
    return backend


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory every user can read (pytest's tmp_path is root-only), for daemons
    that drop root and must still read their config."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="portd-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)
