"""The pytest plugin: real servers as fixtures, registered through the ``pytest11`` entry point.

Fixtures (function scope; each server on its own kernel-chosen port, so pytest-xdist
workers share nothing):

* ``portd_server``: a factory, ``portd_server("latency", delay_s=0.5, wraps="http-hello")``
  takes serve()'s arguments and returns a started Server;
* ready-made: ``echo_server``, ``udp_echo_server``, ``http_server`` (http-hello),
  ``recorder_server``, and the faults ``blackhole_server``, ``stall_server``,
  ``reset_server``, ``close_after_server``, ``refuse_server``, ``latency_server``,
  ``bandwidth_server``, ``slicer_server`` with their default options;
* TLS (a leaf of the session's test CA; ``server.ssl_context()``, ``server.ca_path``):
  ``tls_echo_server``, ``tls_http_server`` (https), ``mtls_echo_server`` (clients need
  ``server.issue_client_cert()``), and the TLS faults ``tls_expired_server``,
  ``tls_not_yet_valid_server``, ``tls_wrong_host_server``, ``tls_self_signed_server``,
  ``tls_untrusted_ca_server``, ``tls_handshake_stall_server``,
  ``tls_reset_during_handshake_server``, ``tls10_only_server`` (echo behind each).

They are sync fixtures whose servers run on a background thread's event loop, so the
same fixture serves sync tests, pytest-asyncio tests and anyio tests (any backend).

At teardown every server stops and, unless ``portd_check_leaks = false`` (ini), the
test errors with a report naming each client connection, task, thread or socket left
open (skipped when the test itself failed: its leaks are usually that failure's
consequence). ``portd_leak_grace_s`` (ini, default 1.0) is how long clients may take to
finish closing. This module imports nothing beyond pytest until a fixture is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from portd.testing.server import ServeContext, Server

CALL_FAILED = pytest.StashKey[bool]()


class ServerFactory(Protocol):
    """The ``portd_server`` fixture: serve()'s arguments in, a started Server out."""

    def __call__(
        self,
        handler: Any = "echo",
        bind: str = "127.0.0.1:0",
        protocol: Any = "tcp",
        **options: Any,
    ) -> Server: ...


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "portd_check_leaks",
        "portd fixtures fail a test that leaves connections, tasks, threads or sockets open",
        type="bool",
        default=True,
    )
    parser.addini(
        "portd_raise_handler_errors",
        "a test whose portd fixture's handler raised fails with HandlerFailedError",
        type="bool",
        default=True,
    )
    parser.addini(
        "portd_leak_grace_s",
        "seconds portd fixtures give clients to finish closing before calling them leaked",
        default="1.0",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when in ("setup", "call") and report.failed:  # one report per failure
        item.stash[CALL_FAILED] = True
    return report


class _TestFailedError(Exception):
    """Passed to a server's exit so it keeps its leak report to itself."""


@pytest.fixture
def portd_server(request: pytest.FixtureRequest) -> Iterator[ServerFactory]:
    """A factory of servers, all stopped (and checked for leaks) at teardown."""
    from portd.testing.server import serve

    defaults = {
        "check_leaks": request.config.getini("portd_check_leaks"),
        "leak_grace_s": float(request.config.getini("portd_leak_grace_s")),
        "raise_handler_errors": request.config.getini("portd_raise_handler_errors"),
    }
    started: list[ServeContext] = []

    def start(
        handler: Any = "echo", bind: str = "127.0.0.1:0", protocol: Any = "tcp", **options: Any
    ) -> Server:
        context = serve(handler, bind, protocol, **{**defaults, **options})
        server = context.__enter__()
        started.append(context)
        return server

    yield start
    _stop_all(started, failed=request.node.stash.get(CALL_FAILED, False))


def _stop_all(started: list[ServeContext], failed: bool) -> None:
    from portd.testing.leaks import LeakError

    leaks: list[str] = []
    errors: list[BaseException] = []
    for context in reversed(started):
        exc = _TestFailedError() if failed else None
        try:
            context.__exit__(type(exc) if exc else None, exc, None)
        except LeakError as leak:
            leaks.append(str(leak))
        except Exception as error:  # noqa: BLE001 - stop the others first, then raise
            errors.append(error)
    if errors:
        raise errors[0]
    if leaks:
        pytest.fail("\n".join(leaks), pytrace=False)


def _ready_made(handler: str, protocol: str = "tcp", **tls: Any) -> Callable[..., Server]:
    def fixture(portd_server: ServerFactory) -> Server:
        return portd_server(handler, protocol=protocol, **tls)

    over = f" over TLS ({tls['tls']})" if tls else ""
    fixture.__doc__ = f"A {handler} server ({protocol}){over} on a kernel-chosen loopback port."
    return fixture


echo_server = pytest.fixture(_ready_made("echo"), name="echo_server")
udp_echo_server = pytest.fixture(_ready_made("echo", "udp"), name="udp_echo_server")
http_server = pytest.fixture(_ready_made("http-hello"), name="http_server")
recorder_server = pytest.fixture(_ready_made("recorder"), name="recorder_server")
blackhole_server = pytest.fixture(_ready_made("blackhole"), name="blackhole_server")
stall_server = pytest.fixture(_ready_made("stall"), name="stall_server")
reset_server = pytest.fixture(_ready_made("reset"), name="reset_server")
close_after_server = pytest.fixture(_ready_made("close-after"), name="close_after_server")
refuse_server = pytest.fixture(_ready_made("refuse"), name="refuse_server")
latency_server = pytest.fixture(_ready_made("latency"), name="latency_server")
bandwidth_server = pytest.fixture(_ready_made("bandwidth"), name="bandwidth_server")
slicer_server = pytest.fixture(_ready_made("slicer"), name="slicer_server")
tls_echo_server = pytest.fixture(_ready_made("echo", tls=True), name="tls_echo_server")
tls_http_server = pytest.fixture(_ready_made("http-hello", tls=True), name="tls_http_server")
mtls_echo_server = pytest.fixture(
    _ready_made("echo", tls=True, tls_client_auth=True), name="mtls_echo_server"
)
tls_expired_server = pytest.fixture(_ready_made("echo", tls="expired"), name="tls_expired_server")
tls_not_yet_valid_server = pytest.fixture(
    _ready_made("echo", tls="not-yet-valid"), name="tls_not_yet_valid_server"
)
tls_wrong_host_server = pytest.fixture(
    _ready_made("echo", tls="wrong-host"), name="tls_wrong_host_server"
)
tls_self_signed_server = pytest.fixture(
    _ready_made("echo", tls="self-signed"), name="tls_self_signed_server"
)
tls_untrusted_ca_server = pytest.fixture(
    _ready_made("echo", tls="untrusted-ca"), name="tls_untrusted_ca_server"
)
tls_handshake_stall_server = pytest.fixture(
    _ready_made("echo", tls="handshake-stall"), name="tls_handshake_stall_server"
)
tls_reset_during_handshake_server = pytest.fixture(
    _ready_made("echo", tls="reset-during-handshake"), name="tls_reset_during_handshake_server"
)
tls10_only_server = pytest.fixture(_ready_made("echo", tls="tls1.0-only"), name="tls10_only_server")
