"""``forward``: a proxy to one upstream, with toxics (faults) changed while it runs.

* ``session``: one forwarded stream connection (TCP or unix), relayed in callbacks;
* ``datagram``: UDP (and unix datagram) forwarding through a table of client sessions.

The handler owns the upstream endpoint (parsed once), the live
:class:`~portd.toxics.ToxicTable` (from the listener's ``[[listener.toxic]]`` tables,
changed by a reload, the HTTP API or the testing API) and whether the proxy is
enabled. A reload that changes only the toxics (or ``enabled``) is applied to this
handler and its live connections: no socket is touched.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from portd.endpoints.base import Endpoint, Peer, ProtocolName
from portd.endpoints.parse import parse_endpoint
from portd.endpoints.proxy_header import VERSIONS, proxy_header
from portd.errors import BindSyntaxError, ConfigError, OptionError
from portd.handlers.base import Connection, DatagramEndpoint, Handler, StreamSession
from portd.handlers.forward.tls import (
    UPSTREAM_TLS_OPTIONS,
    upstream_context,
    upstream_files_digest,
    upstream_tls_problems,
)
from portd.options import Option, Settings
from portd.toxics.spec import Toxic, parse_toxic, protocol_problem
from portd.toxics.table import ToxicTable

LIVE_SETTINGS = frozenset({"toxic", "enabled"})  # a reload applies these in place
MAX_TOXICS = 64


def parse_toxics(value: Any) -> tuple[Toxic, ...]:
    """``[[listener.toxic]]`` tables -> Toxics (unique names).

    Raises:
        OptionError: naming the table (``toxic #2``) and its bad key.
    """
    if not isinstance(value, list | tuple) or len(value) > MAX_TOXICS:
        raise OptionError(f"expected [[listener.toxic]] tables (at most {MAX_TOXICS})")
    toxics: list[Toxic] = []
    for index, table in enumerate(value, start=1):
        if isinstance(table, Toxic):
            toxic = table
        elif isinstance(table, dict):
            try:
                toxic = parse_toxic(table)
            except OptionError as exc:
                raise OptionError(f"toxic #{index}: {exc}") from None
        else:
            raise OptionError(f"toxic #{index}: expected a table with a type key")
        if any(other.name == toxic.name for other in toxics):
            raise OptionError(f"toxic #{index}: name {toxic.name!r} is taken; give it a name key")
        toxics.append(toxic)
    return tuple(toxics)


def _check_upstream(value: Any) -> str:
    try:
        endpoint = parse_endpoint(value, None, absolute_paths=False)
    except BindSyntaxError as exc:
        raise OptionError(str(exc)) from None
    problem = endpoint.upstream_problem()
    if problem:
        raise OptionError(problem)
    return str(value)


class ForwardHandler(Handler):
    """Relays each connection (or client's datagrams) to ``upstream``."""

    name = "forward"
    protocols: ClassVar[frozenset[ProtocolName]] = frozenset({"tcp", "udp"})
    datagram_sessions: ClassVar[bool] = True
    options = (
        Option("upstream", str, None, "where to connect: HOST:PORT or unix:/PATH",
               required=True, convert=_check_upstream),
        Option("connect_timeout_s", float, 5.0, "give up on the upstream connect after this "
               "(the client is reset); 0: the OS's own timeout", minimum=0, maximum=3600),
        Option("proxy_protocol", str, "", "send a PROXY header to the upstream: v1 or v2",
               choices=("", *VERSIONS)),
        Option("udp_session_timeout_s", float, 60.0, "a UDP client's upstream socket closes "
               "after this long without a datagram", minimum=0.001, maximum=86400),
        Option("enabled", bool, True, "false: the proxy is down (connections are reset)"),
        Option("toxic", list, (), "[[listener.toxic]] tables: type, name, stream, toxicity, "
               "attributes, only_new, nth, peer", convert=parse_toxics),
        Option("seed", int, 0, "seeds toxicity draws and jitter: the same seed, the same run"),
        *UPSTREAM_TLS_OPTIONS,
    )  # fmt: skip

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.table = ToxicTable(settings["toxic"])
        self.enabled: bool = settings["enabled"]
        try:
            self.ssl: Any = upstream_context(settings)  # None: plaintext to the upstream
        except OptionError as exc:  # a file changed since the config was checked
            raise ConfigError([str(exc)]) from None
        self.server_hostname: str | None = settings["upstream_servername"] or None
        # Sessions whose client is gone while their upstream still closes (a TLS
        # shutdown waits for the peer's close_notify): aborted if the listener stops.
        self.lingering: set[Any] = set()
        self._upstreams: dict[str, Endpoint] = {}
        self.sessions = self.table.subscribers
        self.udp: Any = None  # the datagram side, made on the first datagram

    @classmethod
    def check_settings(cls, settings: Settings) -> list[str]:
        return upstream_tls_problems(settings)

    @classmethod
    def files_digest(cls, settings: Settings) -> str:
        return upstream_files_digest(settings)

    @classmethod
    def check_protocol(cls, settings: Settings, protocol: ProtocolName) -> list[str]:
        problems = [p for t in settings["toxic"] if (p := protocol_problem(t, protocol))]
        try:
            parse_endpoint(settings["upstream"], protocol)
        except BindSyntaxError as exc:
            problems.append(f"upstream = {settings['upstream']!r}: {exc}")
        if protocol == "udp" and settings["proxy_protocol"]:
            problems.append("proxy_protocol applies to stream forwards only")
        if protocol == "udp" and settings["upstream_tls"]:
            problems.append("upstream_tls applies to stream forwards only (no DTLS)")
        return problems

    def endpoint(self, protocol: ProtocolName) -> Endpoint:
        """The upstream as an endpoint of ``protocol``."""
        found = self._upstreams.get(protocol)
        if found is None:
            found = self._upstreams[protocol] = parse_endpoint(self.settings["upstream"], protocol)
        return found

    @property
    def upstream(self) -> Endpoint:
        """The stream upstream."""
        return self.endpoint("tcp")

    @functools.cached_property
    def upstream_name(self) -> str:
        """The upstream as logs name it (``db.internal:5432``, ``unix:/run/db.sock``)."""
        return str(self.upstream)

    def proxy_header(self, conn: Connection) -> bytes:
        """The PROXY header for this connection, or b"" when off."""
        version = self.settings["proxy_protocol"]
        return proxy_header(version, conn.peer, conn.sockname) if version else b""

    def open_session(self, conn: Connection) -> StreamSession:
        from portd.handlers.forward.session import ForwardSession

        if not self.enabled:
            conn.reset("proxy disabled")
            return StreamSession()
        session = ForwardSession(self, conn, self.table.opened + 1)
        self.table.subscribe(session)
        return session

    def datagram_received(self, data: bytes, peer: Peer, endpoint: DatagramEndpoint) -> None:
        if self.udp is None:
            from portd.handlers.forward.datagram import DatagramForward

            self.udp = DatagramForward(self, endpoint)
        self.udp.received(data, peer)

    def set_enabled(self, enabled: bool) -> None:
        """Up or down; going down resets every live connection (toxiproxy closes them)."""
        self.enabled = enabled
        if not enabled:
            for session in list(self.sessions):
                reset = getattr(session, "reset_connection", None)  # stream sessions
                if reset is not None:
                    reset("proxy disabled")
            if self.udp is not None:  # datagram sessions: their sockets close
                self.udp.close_all()

    def set_toxics(self, toxics: Sequence[Toxic]) -> None:
        """Make the live toxics exactly these (reload)."""
        self.table.replace_all(toxics)

    def updatable(self, settings: Settings) -> bool:
        return all(settings[key] == self.settings[key] for key in settings
                   if key not in LIVE_SETTINGS)  # fmt: skip

    def update(self, settings: Settings) -> None:
        self.settings = settings
        self.set_toxics(settings["toxic"])
        if settings["enabled"] != self.enabled:
            self.set_enabled(settings["enabled"])

    def next_random(self, index: int) -> random.Random:
        """A reproducible random source for client ``index``."""
        return random.Random(f"{self.settings['seed']}:{index}")  # noqa: S311 - fault timings

    def counters(self) -> Mapping[str, int]:
        """Connections each toxic was applied to, as ``toxic_applied:NAME`` (for status
        and /metrics' ``portd_handler_events_total``)."""
        return {f"toxic_applied:{name}": n for name, n in self.table.applied.items()}

    def abort_connections(self) -> None:
        for session in list(self.lingering):
            session.transport.abort()
        self.lingering.clear()

    def close(self) -> None:
        self.abort_connections()
        if self.udp is not None:
            self.udp.close_all()
