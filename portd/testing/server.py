"""``serve()``: a real portd server on a kernel-chosen port, for one block of a test.

The same object works as a sync context manager (the server runs on its own event
loop in a background thread: plain tests, unittest, threads) and as an async one (the
server runs on the caller's asyncio loop: pytest-asyncio, anyio on asyncio). Either way
the block starts once the server accepts, and leaving it closes every socket, task and
thread the server opened.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING, Any

from portd.endpoints.base import ProtocolName
from portd.endpoints.inet import format_host_port
from portd.handlers.base import Handler
from portd.testing.runtime import LoopThread, Running, ServeSpec

if TYPE_CHECKING:
    import ssl

    from portd.testing.leaks import LeakReport
    from portd.testing.records import ConnectionRecord, DatagramRecord
    from portd.testing.tls import CertFiles

DEFAULT_WAIT_S = 10.0
LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def serve(
    handler: str | type[Handler] = "echo",
    bind: str = "127.0.0.1:0",
    protocol: ProtocolName = "tcp",
    *,
    check_leaks: bool = False,
    leak_grace_s: float = 1.0,
    log_level: str | None = None,
    loop: str = "asyncio",
    raise_handler_errors: bool = True,
    tls: bool | str = False,
    tls_client_auth: bool = False,
    **options: Any,
) -> ServeContext:
    """A server for ``with serve(...) as server:`` or ``async with serve(...) as server:``.

    Args:
        handler: a handler name (``echo``, ``http-hello``, ``recorder``, a fault such as
            ``reset``, or ``refuse`` for a port that refuses connections) or a Handler
            subclass, registered or not.
        bind: as in config files: ``[HOST:]PORT`` (port 0 lets the kernel choose), or
            ``unix:PATH`` / ``unix:@NAME`` for a unix-domain socket.
        protocol: tcp or udp.
        check_leaks: raise LeakError on leaving the block when a client connection, a
            task, a thread or a socket is left over (not when the block raised).
        leak_grace_s: with check_leaks, how long clients may take to finish closing.
        log_level: the server's log level; default: the ``portd.testing`` logger's.
        loop: the background loop in sync mode: ``asyncio`` or ``uvloop``.
        raise_handler_errors: on leaving the block, raise HandlerFailedError (its cause
            the handler's first exception) when the handler raised while serving; False
            to test a client against a crashing handler on purpose.
        tls: True serves TLS with a leaf of the session's test CA (see ``ca_path``,
            ``ssl_context()``); a fault name serves a broken TLS server instead:
            ``expired``, ``not-yet-valid``, ``wrong-host``, ``self-signed``,
            ``untrusted-ca``, ``handshake-stall``, ``reset-during-handshake``,
            ``tls1.0-only`` (portd.testing.tls says what each does).
        tls_client_auth: with ``tls``, require a client certificate signed by the test
            CA (mutual TLS; ``issue_client_cert()`` makes one).
        **options: the handler's options, as in a ``[[listener]]`` table.

    Raises (on entering the block):
        ConfigError: an unknown handler or option, or a bad value (every problem listed).
        BindError: the address cannot be bound.
        ValueError: an unknown ``tls`` mode.
    """
    spec = ServeSpec(
        handler, bind, protocol, options, check_leaks, leak_grace_s, log_level, loop,
        raise_handler_errors=raise_handler_errors, tls=tls, tls_client_auth=tls_client_auth,
    )  # fmt: skip
    spec.tls_mode  # noqa: B018 - an unknown mode fails here, not on entering the block
    return ServeContext(spec)


class ServeContext:
    """What ``serve()`` returns: enter it once, sync or async."""

    def __init__(self, spec: ServeSpec) -> None:
        self.spec = spec
        self.server: Server | None = None
        self._thread: LoopThread | None = None
        self._before: set[asyncio.Task[Any]] = set()

    def _open(self) -> Running:
        if self.server is not None:
            raise RuntimeError("this serve() context is already in use; call serve() again")
        return Running(self.spec)

    def __enter__(self) -> Server:
        running = self._open()
        if running.listener is not None:
            thread = LoopThread(running)
            thread.start()
            self._thread = thread
        self.server = Server(running, thread=self._thread)
        return self.server

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        server = self._take()
        threads: list[str] = []
        tasks: list[str] = []
        if self._thread is not None:
            threads = self._thread.stop()
            tasks = self._thread.tasks
        else:
            server.running.close_now()
        self._finish(server, tasks, threads, failed=exc is not None)

    async def __aenter__(self) -> Server:
        from portd.errors import PortdError

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise PortdError(
                "async with serve() needs an asyncio event loop (trio: use the sync form)"
            ) from None
        running = self._open()
        self._before = asyncio.all_tasks()
        await running.start()
        self.server = Server(running, thread=None)
        return self.server

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        from portd.testing.leaks import pending_tasks

        server = self._take()
        await server.running.stop()
        tasks = pending_tasks(asyncio.all_tasks() - self._before, portd_only=True)
        self._finish(server, tasks, [], failed=exc is not None)

    def _take(self) -> Server:
        if self.server is None:
            raise RuntimeError("serve() context exited without being entered")
        return self.server

    def _finish(self, server: Server, tasks: list[str], threads: list[str], failed: bool) -> None:
        records = server.running.records
        if self.spec.raise_handler_errors and records.handler_failures and not failed:
            from portd.testing.records import HandlerFailedError

            error = HandlerFailedError(
                server.running.label, records.handler_failures, records.handler_failure_count
            )
            raise error from records.handler_failures[0]
        if not self.spec.check_leaks:
            return
        report = server.running.report(tasks, threads)
        server.leaks = report
        if report and not failed:
            from portd.testing.leaks import LeakError

            raise LeakError([report])


class Server:
    """A running test server: where it listens, and what it saw.

    ``host``/``port``/``address`` are where to connect (a wildcard bind gives the
    loopback address of its family). Records are snapshots, safe to read from any
    thread; a connection is recorded once it has closed on the server's side.
    """

    def __init__(self, running: Running, thread: LoopThread | None) -> None:
        self.running = running
        self.handler = running.spec.handler_name
        self.protocol = running.spec.protocol
        self.addresses: tuple[Any, ...] = running.addresses
        self._thread = thread
        self.leaks: LeakReport | None = None  # set on leaving the block, with check_leaks

    @property
    def is_unix(self) -> bool:
        """True for a unix-socket server (``bind="unix:..."``)."""
        return self.running.config.endpoint.kind == "unix"

    @property
    def host(self) -> str:
        """The address to connect to, without brackets.

        Raises:
            ValueError: a unix-socket server (use :attr:`path`).
        """
        self._require_inet("host")
        host: str = self.addresses[0].host
        return LOOPBACK.get(host, host)

    @property
    def port(self) -> int:
        """The bound port.

        Raises:
            ValueError: a unix-socket server (use :attr:`path`).
        """
        self._require_inet("port")
        port: int = self.addresses[0].port
        return port

    @property
    def path(self) -> str:
        """The socket's path (``@name`` for an abstract one) of a unix-socket server.

        Raises:
            ValueError: an IP server.
        """
        if not self.is_unix:
            raise ValueError(f"{self!r} is an IP server: use .host and .port")
        path: str = self.addresses[0].path
        return path

    @property
    def address(self) -> Any:
        """What ``connect()`` takes: ``(host, port)`` (ready for
        ``socket.create_connection``), or the path of a unix-socket server."""
        if self.is_unix:
            return self.addresses[0].sockaddr
        return self.host, self.port

    @property
    def tls(self) -> str | None:
        """The TLS mode served (``valid`` or a fault's name), None for plaintext."""
        return self.running.spec.tls_mode

    @property
    def ca_path(self) -> str:
        """The test CA's PEM file, for clients in other processes (curl ``--cacert``,
        ``SSL_CERT_FILE``); the same for every server of the session."""
        from portd.testing.tls import session_authority

        return session_authority().ca_path

    def ssl_context(self, client_cert: CertFiles | None = None) -> ssl.SSLContext:
        """A client SSLContext that trusts the test CA and checks host names (connect
        with ``server_hostname="localhost"`` or the server's address); with
        ``client_cert`` (from :meth:`issue_client_cert`), it presents that certificate."""
        from portd.testing.tls import session_authority

        return session_authority().client_context(client_cert)

    def issue_client_cert(self, name: str = "portd test client") -> CertFiles:
        """A client certificate for ``name`` signed by the test CA, as files (what a
        ``tls_client_auth=True`` server requires)."""
        from portd.testing.tls import session_authority

        return session_authority().issue_client_cert(name)

    @property
    def url(self) -> str:
        """``http://host:port`` (``https://`` for a TLS server; IPv6 in brackets),
        without a trailing slash.

        Raises:
            ValueError: the server is not TCP, or listens on a unix socket (no URL: give
                clients :attr:`path`, as ``curl --unix-socket``).
        """
        if self.protocol != "tcp":
            raise ValueError(f"a {self.protocol} server has no HTTP URL")
        self._require_inet("url")
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{format_host_port(self.host, self.port)}"

    def _require_inet(self, what: str) -> None:
        if self.is_unix:
            raise ValueError(f"{self!r} listens on a unix socket and has no {what}: use .path")

    @property
    def connections(self) -> tuple[ConnectionRecord, ...]:
        """Connections closed so far."""
        return self.running.records.connections

    @property
    def datagrams(self) -> tuple[DatagramRecord, ...]:
        """Datagrams received so far."""
        return self.running.records.datagrams

    @property
    def records_dropped(self) -> int:
        """Records not kept because a kind reached MAX_RECORDS."""
        return self.running.records.dropped

    def wait_connections(
        self, count: int = 1, *, timeout_s: float = DEFAULT_WAIT_S
    ) -> tuple[ConnectionRecord, ...]:
        """Block until ``count`` connections have closed; return all closed so far.

        Raises:
            TimeoutError: fewer closed within ``timeout_s``.
            RuntimeError: the server runs on this thread's loop (use the async form).
        """
        self._check_blocking_allowed("wait_connections")
        records: tuple[ConnectionRecord, ...] = self.running.records.wait(
            "connections", count, timeout_s
        )
        return records

    async def wait_connections_async(
        self, count: int = 1, *, timeout_s: float = DEFAULT_WAIT_S
    ) -> tuple[ConnectionRecord, ...]:
        """:meth:`wait_connections` for async tests (either mode)."""
        records: tuple[ConnectionRecord, ...] = await self.running.records.wait_async(
            "connections", count, timeout_s
        )
        return records

    def wait_datagrams(
        self, count: int = 1, *, timeout_s: float = DEFAULT_WAIT_S
    ) -> tuple[DatagramRecord, ...]:
        """Block until ``count`` datagrams have arrived; return all so far.

        Raises:
            TimeoutError: fewer arrived within ``timeout_s``.
            RuntimeError: the server runs on this thread's loop (use the async form).
        """
        self._check_blocking_allowed("wait_datagrams")
        records: tuple[DatagramRecord, ...] = self.running.records.wait(
            "datagrams", count, timeout_s
        )
        return records

    async def wait_datagrams_async(
        self, count: int = 1, *, timeout_s: float = DEFAULT_WAIT_S
    ) -> tuple[DatagramRecord, ...]:
        """:meth:`wait_datagrams` for async tests (either mode)."""
        records: tuple[DatagramRecord, ...] = await self.running.records.wait_async(
            "datagrams", count, timeout_s
        )
        return records

    def _check_blocking_allowed(self, method: str) -> None:
        if self._thread is not None or self.running.listener is None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        raise RuntimeError(
            f"{method}() would block the event loop this server runs on; "
            f"use await server.{method}_async()"
        )

    def __repr__(self) -> str:
        return f"<portd test server {self.handler} {self.protocol} {self.addresses[0]}>"
