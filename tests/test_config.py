"""The TOML config loader: what loads, the defaults, and the exact line for every problem.

Every problem is one line, ``FILE: WHERE: key = VALUE: what is allowed``, and a file
with several problems reports all of them at once. Nothing here binds a socket: the
port numbers in these configs are only parsed and resolved.
"""

from __future__ import annotations

import errno
import os
import socket
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest

from portd.config import LISTENER_OPTIONS, Config, DaemonConfig, load_config, parse_config
from portd.endpoints.base import ProtocolName as Protocol
from portd.endpoints.inet import InetAddress, InetEndpoint
from portd.errors import EX_CONFIG, ConfigError
from portd.handlers.base import Handler
from portd.handlers.echo import EchoHandler
from portd.handlers.registry import available_handlers, load_handler
from portd.options import Option
from tests.support import write_config

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"
EXAMPLE_PORT = 7007  # the port config.example.toml uses; these tests never bind it
NAME_RULE = "expected 1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
LISTENER_KEYS = ", ".join(sorted(option.name for option in LISTENER_OPTIONS))
ECHO = """
    [[listener]]
    bind = "127.0.0.1:80"
    handler = "echo"
"""


def write(tmp_path: Path, text: str) -> Path:
    """Write dedented TOML to a config file in tmp_path."""
    return write_config(tmp_path, textwrap.dedent(text))


def load(tmp_path: Path, text: str) -> Config:
    """Load dedented TOML as a config file."""
    return load_config(write(tmp_path, text))


def problems(path: Path) -> list[str]:
    """The problem lines load_config reports for ``path`` (it must fail)."""
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    return list(excinfo.value.lines)


def only_problem(tmp_path: Path, text: str) -> str:
    """The single problem line for a config text, without the ``FILE: `` prefix."""
    path = write(tmp_path, text)
    lines = problems(path)
    assert len(lines) == 1, lines
    prefix = f"{path}: "
    assert lines[0].startswith(prefix)
    return lines[0].removeprefix(prefix)


class TcpOnlyHandler(Handler):
    """A handler that serves tcp only and declares two options of its own."""

    name = "tcp-only"
    protocols: ClassVar[frozenset[Protocol]] = frozenset({"tcp"})
    options: ClassVar[tuple[Option, ...]] = (
        Option("greeting", str, "hello", "first line sent"),
        Option("limit", int, 10, "connections", minimum=1, maximum=100),
    )


@pytest.fixture
def tcp_only_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the handler name "tcp-only" load TcpOnlyHandler; other names load as usual."""

    def fake_load_handler(name: str) -> type[Handler]:
        return TcpOnlyHandler if name == "tcp-only" else load_handler(name)

    monkeypatch.setattr("portd.config.listener.load_handler", fake_load_handler)


# --- what loads ---------------------------------------------------------------------


def test_example_config_loads_with_the_listeners_it_shows() -> None:
    """config.example.toml loads: its [daemon] values and three echo listeners, in order."""
    config = load_config(EXAMPLE)
    assert config.source == str(EXAMPLE)
    assert config.daemon == DaemonConfig("auto", "info", 10, "auto")
    port = EXAMPLE_PORT
    got = [
        (
            item.index,
            item.name,
            item.protocol,
            item.endpoint,
            item.handler,
            item.socket_options.backlog,
        )
        for item in config.listeners
    ]
    assert got == [
        (1, "echo", "tcp", InetEndpoint("127.0.0.1", port), EchoHandler, 1024),
        (2, "echo-udp", "udp", InetEndpoint("127.0.0.1", port, "udp"), EchoHandler, 1024),
        (3, "echo-v6", "tcp", InetEndpoint("::1", port), EchoHandler, 1024),
    ]
    assert [item.addresses for item in config.listeners] == [
        (InetAddress(socket.AF_INET, ("127.0.0.1", port)),),
        (InetAddress(socket.AF_INET, ("127.0.0.1", port)),),
        (InetAddress(socket.AF_INET6, ("::1", port, 0, 0)),),
    ]
    assert [item.settings for item in config.listeners] == [{}, {}, {}]


def test_minimal_listener_gets_the_defaults(tmp_path: Path) -> None:
    """Only bind and handler given: tcp, backlog 1024, a derived name, default [daemon]."""
    config = load(tmp_path, ECHO)
    assert config.daemon == DaemonConfig(
        log_format="auto", log_level="info", shutdown_timeout_s=10.0, loop="auto"
    )
    (listener,) = config.listeners
    assert listener.index == 1
    assert listener.name == "echo-tcp-127.0.0.1-80"
    assert listener.label == 'listener "echo-tcp-127.0.0.1-80"'
    assert listener.protocol == "tcp"
    assert listener.socket_options.backlog == 1024
    assert listener.handler is EchoHandler
    assert listener.endpoint == InetEndpoint("127.0.0.1", 80)
    assert listener.addresses == (InetAddress(socket.AF_INET, ("127.0.0.1", 80)),)
    assert listener.settings == {}


@pytest.mark.parametrize(
    ("bind", "protocol", "name"),
    [
        pytest.param("80", "tcp", "echo-tcp-any-80", id="wildcard-is-any"),
        pytest.param("*:7", "udp", "echo-udp-any-7", id="udp"),
        pytest.param("[::1]:80", "tcp", "echo-tcp-__1-80", id="ipv6-colons-replaced"),
        pytest.param("[fe80::1%lo]:80", "tcp", "echo-tcp-fe80__1_lo-80", id="scope-replaced"),
        pytest.param("localhost:http", "tcp", "echo-tcp-localhost-80", id="service-as-number"),
        pytest.param("0", "tcp", "echo-tcp-any-0", id="port-zero"),
    ],
)
def test_default_name_is_handler_protocol_host_port(
    tmp_path: Path, bind: str, protocol: str, name: str
) -> None:
    """Without a name, a listener is called handler-protocol-host-port, safe for systemd."""
    config = load(
        tmp_path,
        f"""
        [[listener]]
        bind = "{bind}"
        protocol = "{protocol}"
        handler = "echo"
        """,
    )
    assert [listener.name for listener in config.listeners] == [name]


def test_every_daemon_key_is_read(tmp_path: Path) -> None:
    """Each [daemon] key sets its field; a float timeout keeps its fraction."""
    config = load(
        tmp_path,
        """
        [daemon]
        log_format = "json"
        log_level = "debug"
        shutdown_timeout_s = 2.5
        loop = "asyncio"
        """
        + ECHO,
    )
    assert config.daemon == DaemonConfig("json", "debug", 2.5, "asyncio")


@pytest.mark.parametrize("timeout", ["0", "86400", "0.001"])
def test_shutdown_timeout_accepts_its_bounds(tmp_path: Path, timeout: str) -> None:
    """shutdown_timeout_s takes 0 and 86400 themselves, and fractions."""
    config = load(tmp_path, f"[daemon]\nshutdown_timeout_s = {timeout}\n" + ECHO)
    assert config.daemon.shutdown_timeout_s == float(timeout)


def test_every_listener_key_is_read(tmp_path: Path) -> None:
    """name, protocol and backlog given explicitly are kept as written."""
    config = load(
        tmp_path,
        """
        [[listener]]
        name = "web.1_a-b"
        bind = "[::1]:http"
        protocol = "tcp"
        handler = "echo"
        backlog = 65535

        [[listener]]
        name = "0"
        bind = "echo"
        protocol = "udp"
        handler = "echo"
        """,
    )
    got = [
        (item.name, item.protocol, item.endpoint, item.socket_options.backlog)
        for item in config.listeners
    ]
    assert got == [
        ("web.1_a-b", "tcp", InetEndpoint("::1", 80), 65535),
        ("0", "udp", InetEndpoint("*", 7, "udp"), 1024),
    ]


@pytest.mark.parametrize("backlog", [1, 65535])
def test_backlog_accepts_its_bounds(tmp_path: Path, backlog: int) -> None:
    """backlog takes 1 and 65535 themselves."""
    config = load(tmp_path, ECHO + f"backlog = {backlog}\n")
    assert [listener.socket_options.backlog for listener in config.listeners] == [backlog]


def test_name_of_64_characters_is_allowed(tmp_path: Path) -> None:
    """A name may be exactly 64 characters long."""
    config = load(tmp_path, ECHO + f'name = "{"n" * 64}"\n')
    assert [listener.name for listener in config.listeners] == ["n" * 64]


def test_parse_config_names_its_source_in_config_and_messages() -> None:
    """parse_config takes already-parsed data; ``source`` prefixes every problem line."""
    table = {"bind": "127.0.0.1:80", "handler": "echo"}
    assert parse_config({"listener": [table]}, "<inline>").source == "<inline>"
    with pytest.raises(ConfigError) as excinfo:
        parse_config({"listener": [{**table, "backlog": 0}]}, "<inline>")
    assert excinfo.value.lines == (
        "<inline>: [[listener]] #1: backlog = 0: expected an integer from 1 to 65535",
    )


def test_handler_options_are_validated_and_stored_in_settings(
    tmp_path: Path, tcp_only_handler: None
) -> None:
    """A handler's own options are accepted in its listener table, with defaults filled in."""
    config = load(
        tmp_path,
        """
        [[listener]]
        bind = "127.0.0.1:80"
        handler = "tcp-only"
        greeting = "hi"
        """,
    )
    assert [listener.settings for listener in config.listeners] == [{"greeting": "hi", "limit": 10}]


# --- problems with the file itself ----------------------------------------------------


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    """Text that is not TOML gives one line with the parser's reason and position."""
    path = write(
        tmp_path,
        """\
        [[listener]]
        bind = "127.0.0.1:80"
        handler = echo
        """,
    )
    assert problems(path) == [f"{path}: TOML syntax error: Invalid value (at line 3, column 11)"]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist says so, with the OS's reason."""
    path = tmp_path / "missing.toml"
    assert problems(path) == [f"{path}: cannot read config: No such file or directory"]


def test_directory_is_not_readable_as_config(tmp_path: Path) -> None:
    """A directory given as the config file is reported, not crashed on."""
    assert problems(tmp_path) == [
        f"{tmp_path}: cannot read config: a directory, not a regular file"
    ]


def test_read_refused_by_the_os_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError while reading (here EACCES) is one line with the OS's reason."""
    path = write(tmp_path, ECHO)
    original = os.open

    def refuse(name: Any, *args: Any, **kwargs: Any) -> int:
        if name == str(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(name))
        return original(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    assert problems(path) == [f"{path}: cannot read config: Permission denied"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    """A config file without read permission gives 'Permission denied'."""
    path = write(tmp_path, ECHO)
    path.chmod(0)
    assert problems(path) == [f"{path}: cannot read config: Permission denied"]


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not UTF-8 gives one line with the decoder's reason."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[[listener]]\nname = "caf\xe9"\n')
    assert problems(path) == [f"{path}: not UTF-8 text: invalid continuation byte"]


def test_config_error_carries_exit_code_78_and_joins_lines() -> None:
    """ConfigError maps to EX_CONFIG and its text is its lines, one per line."""
    with pytest.raises(ConfigError) as excinfo:
        parse_config({"listener": [1, 2]}, "f")
    assert excinfo.value.exit_code == EX_CONFIG
    assert (
        str(excinfo.value)
        == "f: [[listener]] #1: must be a table\nf: [[listener]] #2: must be a table"
    )


# --- one problem, one exact line --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param(
            "[deamon]\nlog_level = 'info'\n" + ECHO,
            "top level: unknown table [deamon]; expected [daemon] and [[listener]]",
            id="unknown-table",
        ),
        pytest.param(
            "",
            "top level: no [[listener]] tables; declare at least one listener",
            id="empty-file",
        ),
        pytest.param(
            "[daemon]\nlog_level = 'info'\n",
            "top level: no [[listener]] tables; declare at least one listener",
            id="daemon-only",
        ),
        pytest.param(
            "listener = []\n",
            "top level: no [[listener]] tables; declare at least one listener",
            id="empty-listener-array",
        ),
        pytest.param(
            "[listener]\nbind = '80'\nhandler = 'echo'\n",
            "top level: no [[listener]] tables; declare at least one listener",
            id="single-bracket-listener",
        ),
        pytest.param("daemon = 5\n" + ECHO, "[daemon]: must be a table", id="daemon-not-table"),
        pytest.param(
            "[daemon]\ncolour = 'red'\n" + ECHO,
            '[daemon]: colour = "red": unknown key; '
            "allowed keys: control_socket, control_socket_abstract, group, log_format, "
            "log_level, loop, metrics, shutdown_timeout_s, toxiproxy_api, toxiproxy_api_remote,"
            " user, workers",
            id="daemon-unknown-key",
        ),
        pytest.param(
            "[daemon]\ncontrol_socket = '@portd'\n" + ECHO,
            '[daemon]: control_socket = "@portd": an abstract name can be reached by any local '
            "user; set control_socket_abstract = true to allow it",
            id="control-socket-abstract-without-consent",
        ),
        pytest.param(
            "[daemon]\ncontrol_socket = 'run/control.sock'\n" + ECHO,
            '[daemon]: control_socket = "run/control.sock": expected an absolute path, "@name", '
            '"auto" or "" (off)',
            id="control-socket-relative",
        ),
        pytest.param(
            "[daemon]\nlog_level = 3\n" + ECHO,
            "[daemon]: log_level = 3: expected one of "
            "'debug', 'info', 'warning', 'error', 'critical'",
            id="daemon-wrong-type",
        ),
        pytest.param(
            "[daemon]\nlog_format = 'xml'\n" + ECHO,
            "[daemon]: log_format = \"xml\": expected one of 'auto', 'console', 'json'",
            id="daemon-bad-log-format",
        ),
        pytest.param(
            "[daemon]\nloop = 'trio'\n" + ECHO,
            "[daemon]: loop = \"trio\": expected one of 'auto', 'uvloop', 'asyncio'",
            id="daemon-bad-loop",
        ),
        pytest.param(
            "[daemon]\nshutdown_timeout_s = '10'\n" + ECHO,
            '[daemon]: shutdown_timeout_s = "10": expected a number from 0 to 86400',
            id="timeout-string",
        ),
        pytest.param(
            "[daemon]\nshutdown_timeout_s = true\n" + ECHO,
            "[daemon]: shutdown_timeout_s = true: expected a number from 0 to 86400",
            id="timeout-bool",
        ),
        pytest.param(
            "[daemon]\nshutdown_timeout_s = -1\n" + ECHO,
            "[daemon]: shutdown_timeout_s = -1: expected a number from 0 to 86400",
            id="timeout-negative",
        ),
        pytest.param(
            "[daemon]\nshutdown_timeout_s = 86400.5\n" + ECHO,
            "[daemon]: shutdown_timeout_s = 86400.5: expected a number from 0 to 86400",
            id="timeout-too-long",
        ),
        pytest.param(
            "[daemon]\nshutdown_timeout_s = inf\n" + ECHO,
            "[daemon]: shutdown_timeout_s = inf: expected a number from 0 to 86400",
            id="timeout-inf",
        ),
        pytest.param(
            "[daemon]\nworkers = 0\n" + ECHO,
            '[daemon]: workers = 0: expected an integer from 1 to 1024, or "auto" (one per '
            "usable CPU)",
            id="workers-zero",
        ),
        pytest.param(
            "[daemon]\nworkers = 'many'\n" + ECHO,
            '[daemon]: workers = "many": expected an integer from 1 to 1024, or "auto" (one per '
            "usable CPU)",
            id="workers-word",
        ),
        pytest.param(
            "[daemon]\nworkers = true\n" + ECHO,
            '[daemon]: workers = true: expected an integer from 1 to 1024, or "auto" (one per '
            "usable CPU)",
            id="workers-bool",
        ),
        pytest.param(
            "[daemon]\nmetrics = 'nope:x'\n" + ECHO,
            "[daemon]: metrics = \"nope:x\": bad port 'x'; expected 0-65535 or a service name "
            "from /etc/services",
            id="metrics-bad-port",
        ),
        pytest.param(
            "[daemon]\nmetrics = 9465\n" + ECHO,
            "[daemon]: metrics = 9465: expected a string",
            id="metrics-not-a-string",
        ),
        pytest.param(
            "[[listener]]\nname = 'e'\nbind = 'unix:/run/e.sock'\nhandler = 'echo'\n"
            "reuse_port = true\n",
            '[[listener]] #1 "e": reuse_port = true: applies to inet listeners only',
            id="reuse-port-on-unix",
        ),
        pytest.param(
            "[daemon]\nshutdown_timeout_s = nan\n" + ECHO,
            "[daemon]: shutdown_timeout_s = nan: expected a number from 0 to 86400",
            id="timeout-nan",
        ),
        pytest.param("listener = [1]\n", "[[listener]] #1: must be a table", id="not-a-table"),
        pytest.param(
            "[[listener]]\nhandler = 'echo'\n",
            "[[listener]] #1: missing required key 'bind'",
            id="missing-bind",
        ),
        pytest.param(
            "[[listener]]\nbind = '80'\n",
            "[[listener]] #1: missing required key 'handler'",
            id="missing-handler",
        ),
        pytest.param(
            "[[listener]]\nbind = '80'\nhandler = 'ecoh'\n",
            "[[listener]] #1: handler = \"ecoh\": unknown handler 'ecoh'; "
            f"installed handlers: {', '.join(available_handlers())}",
            id="unknown-handler",
        ),
        pytest.param(
            ECHO + "bakclog = 5\n",
            "[[listener]] #1: bakclog = 5: unknown key; did you mean 'backlog'? "
            f"allowed keys: {LISTENER_KEYS}",
            id="unknown-key",
        ),
        pytest.param(
            ECHO + "name = 'web'\nport = 80\n",
            f'[[listener]] #1 "web": port = 80: unknown key; allowed keys: {LISTENER_KEYS}',
            id="unknown-key-named",
        ),
        pytest.param(
            ECHO + "backlog = '1024'\n",
            '[[listener]] #1: backlog = "1024": expected an integer from 1 to 65535',
            id="backlog-string",
        ),
        pytest.param(
            ECHO + "backlog = true\n",
            "[[listener]] #1: backlog = true: expected an integer from 1 to 65535",
            id="backlog-bool",
        ),
        pytest.param(
            ECHO + "backlog = 10.0\n",
            "[[listener]] #1: backlog = 10.0: expected an integer from 1 to 65535",
            id="backlog-float",
        ),
        pytest.param(
            ECHO + "backlog = 0\n",
            "[[listener]] #1: backlog = 0: expected an integer from 1 to 65535",
            id="backlog-zero",
        ),
        pytest.param(
            ECHO + "backlog = 65536\n",
            "[[listener]] #1: backlog = 65536: expected an integer from 1 to 65535",
            id="backlog-too-high",
        ),
        pytest.param(
            ECHO + "protocol = 'sctp'\n",
            "[[listener]] #1: protocol = \"sctp\": expected one of 'tcp', 'udp'",
            id="protocol-sctp",
        ),
        pytest.param(
            ECHO + "protocol = 'TCP'\n",
            "[[listener]] #1: protocol = \"TCP\": expected one of 'tcp', 'udp'",
            id="protocol-case",
        ),
        pytest.param(
            ECHO + "protocol = 'udp'\nbacklog = 128\n",
            "[[listener]] #1: backlog = 128: applies to tcp listeners only",
            id="backlog-on-udp",
        ),
        pytest.param(
            "[[listener]]\nbind = 80\nhandler = 'echo'\n",
            "[[listener]] #1: bind = 80: expected a string",
            id="bind-integer",
        ),
        pytest.param(
            "[[listener]]\nbind = '80'\nhandler = 5\n",
            "[[listener]] #1: handler = 5: expected a string",
            id="handler-integer",
        ),
        pytest.param(
            ECHO + "name = 5\n",
            "[[listener]] #1: name = 5: expected a string",
            id="name-integer",
        ),
        pytest.param(
            "[[listener]]\nbind = '[::1:80'\nhandler = 'echo'\n",
            "[[listener]] #1: bind = \"[::1:80\": bad bind '[::1:80'; expected [IPv6]:PORT",
            id="bind-missing-bracket",
        ),
        pytest.param(
            "[[listener]]\nbind = '::1'\nhandler = 'echo'\n",
            "[[listener]] #1: bind = \"::1\": bad bind '::1'; "
            "put IPv6 addresses in brackets: [::1]:PORT",
            id="bind-unbracketed-ipv6",
        ),
        pytest.param(
            "[[listener]]\nbind = '70000'\nhandler = 'echo'\n",
            '[[listener]] #1: bind = "70000": port 70000 is out of range; expected 0-65535',
            id="bind-port-too-high",
        ),
        pytest.param(
            "[[listener]]\nbind = 'http'\nprotocol = 'udp'\nhandler = 'echo'\n",
            "[[listener]] #1: bind = \"http\": service 'http' is 80/tcp in /etc/services, not udp",
            id="bind-service-wrong-protocol",
        ),
        pytest.param(
            "[[listener]]\nbind = '127.0.0.1:\u00b2'\nhandler = 'echo'\n",
            '[[listener]] #1: bind = "127.0.0.1:\\u00b2": '
            "bad port '\u00b2'; expected 0-65535 or a service name from /etc/services",
            id="bind-unicode-digit",
        ),
        pytest.param(
            ECHO + "name = 'has space'\n",
            f'[[listener]] #1 "has space": name = "has space": {NAME_RULE}',
            id="name-space",
        ),
        pytest.param(
            ECHO + "name = '-dash'\n",
            f'[[listener]] #1 "-dash": name = "-dash": {NAME_RULE}',
            id="name-leading-dash",
        ),
        pytest.param(
            ECHO + f"name = '{'n' * 65}'\n",
            f'[[listener]] #1 "{"n" * 65}": name = "{"n" * 65}": {NAME_RULE}',
            id="name-too-long",
        ),
        pytest.param(
            ECHO + "name = 'caf\u00e9'\n",
            f'[[listener]] #1 "caf\\u00e9": name = "caf\\u00e9": {NAME_RULE}',
            id="name-non-ascii",
        ),
        pytest.param(
            ECHO + "name = ''\n",
            f'[[listener]] #1 "": name = "": {NAME_RULE}',
            id="name-empty",
        ),
        pytest.param(
            ECHO + 'name = "a\\nb"\n',
            f'[[listener]] #1 "a\\nb": name = "a\\nb": {NAME_RULE}',
            id="name-newline-stays-one-line",
        ),
    ],
)
def test_each_problem_is_one_exact_line(tmp_path: Path, text: str, line: str) -> None:
    """Each kind of problem gives exactly one line: FILE: WHERE: key = VALUE: what is allowed."""
    assert only_problem(tmp_path, text) == line


def test_unresolvable_host_names_the_host(tmp_path: Path) -> None:
    """A bind whose host does not resolve is one line quoting the bind and the host."""
    line = only_problem(
        tmp_path, "[[listener]]\nbind = 'nonexistent.invalid:80'\nhandler = 'echo'\n"
    )
    prefix = (
        '[[listener]] #1: bind = "nonexistent.invalid:80": '
        "cannot resolve host 'nonexistent.invalid': "
    )
    assert line.startswith(prefix)
    assert len(line) > len(prefix)


def test_missing_bind_and_handler_are_both_reported(tmp_path: Path) -> None:
    """An empty listener table lacks two required keys, and both are named."""
    path = write(tmp_path, "[[listener]]\nname = 'x'\n")
    assert problems(path) == [
        f"{path}: [[listener]] #1 \"x\": missing required key 'bind'",
        f"{path}: [[listener]] #1 \"x\": missing required key 'handler'",
    ]


def test_handler_that_does_not_serve_the_protocol(tmp_path: Path, tcp_only_handler: None) -> None:
    """A udp listener on a tcp-only handler names the protocols the handler serves."""
    line = only_problem(
        tmp_path, "[[listener]]\nbind = '80'\nprotocol = 'udp'\nhandler = 'tcp-only'\n"
    )
    assert line == "[[listener]] #1: protocol = \"udp\": handler 'tcp-only' serves tcp only"


def test_handler_option_out_of_range(tmp_path: Path, tcp_only_handler: None) -> None:
    """A handler's option is checked against its declared range."""
    line = only_problem(tmp_path, "[[listener]]\nbind = '80'\nhandler = 'tcp-only'\nlimit = 0\n")
    assert line == "[[listener]] #1: limit = 0: expected an integer from 1 to 100"


def test_unknown_key_lists_the_handler_options_too(tmp_path: Path, tcp_only_handler: None) -> None:
    """The allowed keys in an unknown-key message include the handler's own options."""
    line = only_problem(
        tmp_path, "[[listener]]\nbind = '80'\nhandler = 'tcp-only'\ncolour = 'red'\n"
    )
    assert line == (
        '[[listener]] #1: colour = "red": unknown key; '
        "allowed keys: " + ", ".join(sorted([*LISTENER_KEYS.split(", "), "greeting", "limit"]))
    )


def test_options_of_another_handler_are_unknown_keys(tmp_path: Path) -> None:
    """A key only tcp-only declares is an unknown key on an echo listener."""
    line = only_problem(tmp_path, ECHO + "greeting = 'hi'\n")
    assert line == f'[[listener]] #1: greeting = "hi": unknown key; allowed keys: {LISTENER_KEYS}'


def test_invalid_name_is_reported_with_the_listeners_other_problems(tmp_path: Path) -> None:
    """A bad name is not hidden by another problem in the same listener."""
    path = write(tmp_path, ECHO + "name = 'a b'\nbacklog = 0\n")
    assert problems(path) == [
        f'{path}: [[listener]] #1 "a b": backlog = 0: expected an integer from 1 to 65535',
        f'{path}: [[listener]] #1 "a b": name = "a b": {NAME_RULE}',
    ]


def test_duplicate_name_names_the_first_holder(tmp_path: Path) -> None:
    """A second listener with a taken name is reported with the index of the first."""
    path = write(
        tmp_path,
        """
        [[listener]]
        name = "dup"
        bind = "127.0.0.1:80"
        handler = "echo"

        [[listener]]
        name = "other"
        bind = "127.0.0.1:81"
        handler = "echo"

        [[listener]]
        name = "dup"
        bind = "127.0.0.1:82"
        handler = "echo"
        """,
    )
    assert problems(path) == [
        f'{path}: [[listener]] #3 "dup": name = "dup": '
        "duplicate name; [[listener]] #1 already has it"
    ]


def test_default_names_can_collide_too(tmp_path: Path) -> None:
    """Two unnamed listeners whose derived names match are reported as duplicates."""
    path = write(
        tmp_path,
        """
        [[listener]]
        bind = "127.0.0.1:0"
        handler = "echo"

        [[listener]]
        bind = "127.0.0.1:0"
        handler = "echo"
        """,
    )
    assert problems(path) == [
        f'{path}: [[listener]] #2 "echo-tcp-127.0.0.1-0": name = "echo-tcp-127.0.0.1-0": '
        "duplicate name; [[listener]] #1 already has it"
    ]


# --- conflicts between listeners ----------------------------------------------------------


def two_listeners(first: str, second: str, protocols: tuple[str, str] = ("tcp", "tcp")) -> str:
    """A config with listeners "a" then "b" on the given binds and protocols."""
    return textwrap.dedent(
        f"""
        [[listener]]
        name = "a"
        bind = "{first}"
        protocol = "{protocols[0]}"
        handler = "echo"

        [[listener]]
        name = "b"
        bind = "{second}"
        protocol = "{protocols[1]}"
        handler = "echo"
        """
    )


@pytest.mark.parametrize(
    ("first", "second", "protocol", "line"),
    [
        pytest.param(
            "127.0.0.1:80",
            "127.0.0.1:80",
            "tcp",
            'bind = "127.0.0.1:80": '
            '127.0.0.1:80 overlaps 127.0.0.1:80 of [[listener]] #1 "a" (tcp)',
            id="same-address-tcp",
        ),
        pytest.param(
            "127.0.0.1:80",
            "127.0.0.1:80",
            "udp",
            'bind = "127.0.0.1:80": '
            '127.0.0.1:80 overlaps 127.0.0.1:80 of [[listener]] #1 "a" (udp)',
            id="same-address-udp",
        ),
        pytest.param(
            "[::1]:80",
            "[::1]:80",
            "tcp",
            'bind = "[::1]:80": [::1]:80 overlaps [::1]:80 of [[listener]] #1 "a" (tcp)',
            id="same-ipv6-address",
        ),
        pytest.param(
            "*:80",
            "127.0.0.1:80",
            "tcp",
            'bind = "127.0.0.1:80": 127.0.0.1:80 overlaps 0.0.0.0:80 of [[listener]] #1 "a" (tcp)',
            id="wildcard-then-ipv4",
        ),
        pytest.param(
            "127.0.0.1:80",
            "*:80",
            "udp",
            'bind = "*:80": 0.0.0.0:80 overlaps 127.0.0.1:80 of [[listener]] #1 "a" (udp)',
            id="ipv4-then-wildcard",
        ),
        pytest.param(
            "0.0.0.0:80",
            "127.0.0.1:80",
            "tcp",
            'bind = "127.0.0.1:80": 127.0.0.1:80 overlaps 0.0.0.0:80 of [[listener]] #1 "a" (tcp)',
            id="ipv4-any-then-ipv4",
        ),
        pytest.param(
            "*:80",
            "[::1]:80",
            "tcp",
            'bind = "[::1]:80": [::1]:80 overlaps [::]:80 of [[listener]] #1 "a" (tcp)',
            id="wildcard-then-ipv6",
        ),
        pytest.param(
            "[::]:80",
            "[::1]:80",
            "tcp",
            'bind = "[::1]:80": [::1]:80 overlaps [::]:80 of [[listener]] #1 "a" (tcp)',
            id="ipv6-any-then-ipv6",
        ),
        pytest.param(
            "*:80",
            "*:80",
            "tcp",
            'bind = "*:80": 0.0.0.0:80 overlaps 0.0.0.0:80 of [[listener]] #1 "a" (tcp)',
            id="wildcard-twice",
        ),
        pytest.param(
            "localhost:80",
            "127.0.0.1:80",
            "tcp",
            'bind = "127.0.0.1:80": '
            '127.0.0.1:80 overlaps 127.0.0.1:80 of [[listener]] #1 "a" (tcp)',
            id="name-and-its-address",
        ),
        pytest.param(
            "127.0.0.1:80",
            "127.1:80",
            "tcp",
            'bind = "127.1:80": 127.0.0.1:80 overlaps 127.0.0.1:80 of [[listener]] #1 "a" (tcp)',
            id="same-address-spelt-differently",
        ),
    ],
)
def test_overlapping_listeners_conflict(
    tmp_path: Path, first: str, second: str, protocol: str, line: str
) -> None:
    """Same protocol and port with overlapping addresses: the later listener is reported."""
    text = two_listeners(first, second, (protocol, protocol))
    assert only_problem(tmp_path, text) == f'[[listener]] #2 "b": {line}'


@pytest.mark.parametrize(
    ("first", "second", "protocols"),
    [
        pytest.param("127.0.0.1:80", "127.0.0.1:80", ("tcp", "udp"), id="tcp-and-udp"),
        pytest.param("*:80", "*:80", ("udp", "tcp"), id="wildcard-tcp-and-udp"),
        pytest.param("0.0.0.0:80", "[::1]:80", ("tcp", "tcp"), id="ipv4-any-and-ipv6"),
        pytest.param("[::]:80", "127.0.0.1:80", ("tcp", "tcp"), id="ipv6-any-and-ipv4"),
        pytest.param("127.0.0.1:80", "127.0.0.2:80", ("tcp", "tcp"), id="other-address"),
        pytest.param("127.0.0.1:80", "127.0.0.1:81", ("tcp", "tcp"), id="other-port"),
        pytest.param("127.0.0.1:0", "127.0.0.1:0", ("tcp", "udp"), id="port-zero-same-address"),
        pytest.param("*:0", "*:0", ("tcp", "tcp"), id="port-zero-wildcard"),
    ],
)
def test_listeners_that_can_both_bind_do_not_conflict(
    tmp_path: Path, first: str, second: str, protocols: tuple[str, str]
) -> None:
    """Other protocol, other family (IPv6 is v6-only), other address or port 0 all load."""
    config = load(tmp_path, two_listeners(first, second, protocols))
    assert [listener.name for listener in config.listeners] == ["a", "b"]


def test_conflict_names_the_listener_it_overlaps(tmp_path: Path) -> None:
    """With an unrelated listener between, the conflict still names the right one (#1)."""
    path = write(
        tmp_path,
        """
        [[listener]]
        name = "a"
        bind = "127.0.0.1:80"
        handler = "echo"

        [[listener]]
        name = "b"
        bind = "127.0.0.1:81"
        handler = "echo"

        [[listener]]
        name = "c"
        bind = "80"
        protocol = "udp"
        handler = "echo"

        [[listener]]
        name = "d"
        bind = "[::1]:81"
        handler = "echo"

        [[listener]]
        name = "e"
        bind = "0.0.0.0:80"
        handler = "echo"
        """,
    )
    assert problems(path) == [
        f'{path}: [[listener]] #5 "e": bind = "0.0.0.0:80": '
        '0.0.0.0:80 overlaps 127.0.0.1:80 of [[listener]] #1 "a" (tcp)'
    ]


# --- many problems at once ------------------------------------------------------------


def test_every_problem_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    """Problems in the top level, [daemon] and several listeners all come out, in order."""
    path = write(
        tmp_path,
        """
        [deamon]
        x = 1

        [daemon]
        log_level = "loud"
        shutdown_timeout_s = -5

        [[listener]]
        name = "one"
        bind = "127.0.0.1:80"
        handler = "echo"
        backlog = 0
        colour = "red"

        [[listener]]
        name = "two"
        bind = "127.0.0.1:81"
        handler = "ecoh"

        [[listener]]
        name = "three"
        bind = "[::1:82"
        handler = "echo"

        [[listener]]
        name = "bad name"
        bind = "127.0.0.1:83"
        protocol = "sctp"
        handler = "echo"

        [[listener]]
        name = "dup"
        bind = "127.0.0.1:84"
        handler = "echo"

        [[listener]]
        name = "dup"
        bind = "127.0.0.1:85"
        handler = "echo"

        [[listener]]
        name = "clash"
        bind = "*:84"
        handler = "echo"

        [[listener]]
        bind = "127.0.0.1:70000"
        protocol = "udp"
        handler = "echo"
        backlog = 5
        """,
    )
    handlers = ", ".join(available_handlers())
    expected = [
        "top level: unknown table [deamon]; expected [daemon] and [[listener]]",
        '[daemon]: log_level = "loud": expected one of '
        "'debug', 'info', 'warning', 'error', 'critical'",
        "[daemon]: shutdown_timeout_s = -5: expected a number from 0 to 86400",
        '[[listener]] #1 "one": backlog = 0: expected an integer from 1 to 65535',
        f'[[listener]] #1 "one": colour = "red": unknown key; allowed keys: {LISTENER_KEYS}',
        '[[listener]] #2 "two": handler = "ecoh": unknown handler \'ecoh\'; '
        f"installed handlers: {handlers}",
        '[[listener]] #3 "three": bind = "[::1:82": bad bind \'[::1:82\'; expected [IPv6]:PORT',
        "[[listener]] #4 \"bad name\": protocol = \"sctp\": expected one of 'tcp', 'udp'",
        f'[[listener]] #4 "bad name": name = "bad name": {NAME_RULE}',
        "[[listener]] #8: backlog = 5: applies to tcp listeners only",
        '[[listener]] #8: bind = "127.0.0.1:70000": port 70000 is out of range; expected 0-65535',
        '[[listener]] #6 "dup": name = "dup": duplicate name; [[listener]] #5 already has it',
        '[[listener]] #7 "clash": bind = "*:84": '
        '0.0.0.0:84 overlaps 127.0.0.1:84 of [[listener]] #5 "dup" (tcp)',
    ]
    lines = problems(path)
    assert lines == [f"{path}: {line}" for line in expected]
    assert len(lines) == 13


@pytest.mark.parametrize(
    ("handler", "extra", "idle_timeout_s"),
    [
        ("echo", "", 60.0),
        ("recorder", "", 60.0),
        ("file-receive", 'directory = "/tmp/portd-test-in"', 60.0),  # checked, not made
        ("echo", "idle_timeout_s = 5", 5.0),
        ("echo", "idle_timeout_s = 0", 0.0),
        ("http-hello", "", 0.0),  # has its own header and keep-alive deadlines
        ("stall", "", 0.0),  # holds connections on purpose
    ],
    ids=["echo", "recorder", "file-receive", "key-wins", "key-turns-it-off", "http", "fault"],
)
def test_handlers_bring_a_safe_idle_timeout_that_the_listener_key_overrides(
    handler: str, extra: str, idle_timeout_s: float
) -> None:
    """1,024 silent peers locked a file-receive listener out for good: no idle default."""
    table: dict[str, object] = {"bind": "127.0.0.1:0", "handler": handler}
    if extra:
        key, _, value = extra.partition(" = ")
        table[key] = value.strip('"') if value.startswith('"') else float(value)
    (listener,) = parse_config({"listener": [table]}, "t.toml").listeners
    assert listener.limits.idle_timeout_s == idle_timeout_s


def test_a_udp_listener_of_a_handler_with_tcp_defaults_loads() -> None:
    (listener,) = parse_config(
        {"listener": [{"bind": "127.0.0.1:0", "handler": "echo", "protocol": "udp"}]}, "t.toml"
    ).listeners
    assert listener.protocol == "udp"
