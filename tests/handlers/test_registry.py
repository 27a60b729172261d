"""Finding handlers: built-ins by name, third-party ones through the `portd.handlers`
entry-point group (using README's example handler, so the docs cannot rot)."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from portd.config import parse_config
from portd.errors import ConfigError, HandlerError
from portd.handlers.base import Handler
from portd.handlers.echo import EchoHandler
from portd.handlers.registry import available_handlers, load_handler
from tests.docs import blocks, section
from tests.support import Daemon

ROOT = Path(__file__).resolve().parents[2]


def readme_handler_source() -> str:
    """The Python example under README's "Writing a handler"."""
    return blocks("python", section("Writing a handler"))[0]


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    """A directory holding README's handler as an installed distribution."""
    (tmp_path / "portd_upper.py").write_text(readme_handler_source(), encoding="utf-8")
    dist = tmp_path / "portd_upper-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: portd-upper\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[portd.handlers]\nupper = portd_upper:UpperHandler\nbroken = portd_upper:UpperSession\n"
    )
    return tmp_path


@pytest.fixture
def installed_plugin(plugin_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(plugin_path))
    yield plugin_path
    sys.path.remove(str(plugin_path))
    sys.modules.pop("portd_upper", None)


def test_builtin_echo_is_found_by_name() -> None:
    assert load_handler("echo") is EchoHandler


def test_unknown_handler_names_the_installed_ones() -> None:
    installed = ", ".join(available_handlers())
    assert "echo" in installed
    with pytest.raises(HandlerError) as raised:
        load_handler("nope")
    assert str(raised.value) == f"unknown handler 'nope'; installed handlers: {installed}"


@pytest.mark.usefixtures("installed_plugin")
def test_entry_point_handler_is_listed_loaded_and_its_options_validated() -> None:
    assert {"echo", "upper"} <= set(available_handlers())
    handler = load_handler("upper")
    assert handler.name == "upper"
    listener = {"name": "u", "bind": "127.0.0.1:0", "handler": "upper", "limit": 0}
    with pytest.raises(ConfigError) as caught:
        parse_config({"listener": [listener]}, "plugin.toml")
    assert caught.value.lines == (
        'plugin.toml: [[listener]] #1 "u": limit = 0: expected an integer >= 1',
    )
    listener["limit"] = 5
    config = parse_config({"listener": [listener]}, "plugin.toml")
    assert config.listeners[0].settings == {"limit": 5}


@pytest.mark.usefixtures("installed_plugin")
def test_an_entry_point_that_is_not_a_handler_class_is_refused() -> None:
    with pytest.raises(HandlerError, match=r"^handler 'broken' .* is not a portd Handler"):
        load_handler("broken")


def test_readme_handler_serves_through_the_daemon(
    plugin_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    config = textwrap.dedent("""
        [[listener]]
        name = "upper"
        bind = "127.0.0.1:0"
        handler = "upper"
        limit = 8
    """)
    env = {"PYTHONPATH": str(plugin_path), "PATH": "/usr/bin:/bin"}
    env["XDG_RUNTIME_DIR"] = os.environ["XDG_RUNTIME_DIR"]  # the control socket: this run's
    daemon = start_daemon(config, env=env)
    port = daemon.ready()["upper"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"hello, portd")
        received = b""
        while chunk := sock.recv(100):
            received += chunk
    assert received == b"HELLO, PORTD"  # closed by the handler after its 8-byte limit


def test_a_handler_option_may_not_shadow_a_listener_key() -> None:
    """Handler options share the listener's table: an option called `name` would replace
    the listener's name, so such a handler is refused when it is loaded."""
    from portd.handlers.registry import _check_option_names
    from portd.options import Option

    class Shadowing(Handler):
        name = "shadowing"
        protocols = frozenset({"tcp"})
        options = (Option("name", str, "x", "a file name"), Option("fine", int, 1, "ok"))

    with pytest.raises(HandlerError, match=r"declares options named like listener keys: name$"):
        _check_option_names("shadowing", Shadowing)
