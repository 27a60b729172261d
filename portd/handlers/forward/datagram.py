"""UDP (and unix datagram) forwarding: one upstream socket per client, a NAT table.

Each client address gets its own connected upstream socket, so the upstream's replies
come back on that socket and go to that client. A session ends after
``udp_session_timeout_s`` without a datagram either way (checked four times per
timeout, so it ends within a quarter timeout more); at most the listener's
``max_connections`` sessions exist, and a new client beyond that takes the place of
the one quiet for longest. Nothing queues without a bound: a datagram the kernel will
not take at once is dropped and counted, as datagrams may be.

Toxics that apply to datagrams: ``latency`` (each datagram late, in order, at most
MAX_DELAYED per direction and session) and ``packet_loss`` (``loss`` probability;
``burst`` > 1 makes losses come in runs of that mean length: a two-state Gilbert model
whose long-run loss is still ``loss``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from portd.toxics.spec import Toxic
from portd.toxics.table import Targeting

if TYPE_CHECKING:
    from portd.endpoints.base import Peer
    from portd.handlers.base import DatagramEndpoint
    from portd.handlers.forward import ForwardHandler

MAX_DATAGRAM_BYTES = 65536
READ_BATCH = 64
MAX_DELAYED = 1024  # datagrams held by latency per direction and session; more are dropped
SWEEPS_PER_TIMEOUT = 4  # the idle sweep runs four times per udp_session_timeout_s
STREAMS = ("upstream", "downstream")


class Loss:
    """Gilbert's two states: in a loss run each datagram is lost; otherwise one starts
    with probability ``enter`` and lasts ``burst`` datagrams on average."""

    def __init__(self) -> None:
        self.losing = False

    def drop(self, toxic: Toxic, rng: Any) -> bool:
        loss, burst = toxic["loss"], max(toxic["burst"], 1.0)
        if loss >= 1:
            return True
        if burst <= 1:  # no runs: each datagram on its own
            return bool(rng.random() < loss)
        if self.losing:
            self.losing = rng.random() < 1 - 1 / burst
        else:
            self.losing = rng.random() < loss / (burst * (1 - loss))
        return self.losing


class ClientSession:
    """One client's upstream socket and its toxic state."""

    def __init__(self, forward: DatagramForward, peer: Peer, ordinal: int) -> None:
        self.forward = forward
        self.peer = peer
        handler = forward.handler
        self.rng = handler.next_random(ordinal)
        self.targeting = Targeting(handler.table, ordinal, peer.source, lambda: self.rng)
        self.sock = handler.endpoint("udp").connect_datagram()
        self.last_active = forward.tick  # sweeps seen; cheaper than a clock read per datagram
        self.losses = {"upstream": Loss(), "downstream": Loss()}
        self.delayed: dict[str, deque[Any]] = {"upstream": deque(), "downstream": deque()}
        self.chosen: dict[str, list[Toxic]] = {}
        self.plain = True  # no toxic applies and nothing is delayed: straight through
        self.toxics_changed()
        forward.endpoint.watch_socket(self.sock, self._readable)
        self.send, self.deliver_to = self.sock.send, forward.endpoint.send

    def toxics_changed(self) -> None:
        """Read the table once per change, not once per datagram."""
        self.chosen = {stream: self.targeting.chosen(stream) for stream in STREAMS}
        self._check_plain()

    def _check_plain(self) -> None:
        self.plain = not any(self.chosen.values()) and not any(self.delayed.values())

    def send_up(self, data: bytes) -> None:
        """A datagram from the client."""
        self.last_active = self.forward.tick
        if self.plain:
            self._to_upstream(data)
        else:
            self._through("upstream", data, self._to_upstream)

    def _to_upstream(self, data: bytes) -> None:
        try:
            self.send(data)
        except OSError:  # EAGAIN, or an ICMP error for an earlier datagram
            self.forward.dropped += 1

    def _readable(self) -> None:
        recv, forward = self.sock.recv, self.forward
        self.last_active = forward.tick
        for _ in range(READ_BATCH):
            try:
                data = recv(MAX_DATAGRAM_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ECONNREFUSED: nobody listens upstream (ICMP)
                forward.dropped += 1
                continue
            if self.plain:
                self._to_client(data)
            else:
                self._through("downstream", data, self._to_client)

    def _to_client(self, data: bytes) -> None:
        if not self.deliver_to(data, self.peer):
            self.forward.dropped += 1

    def _through(self, stream: str, data: bytes, deliver: Any) -> None:
        delay_ms = 0.0
        for toxic in self.chosen[stream]:
            if toxic.type == "packet_loss" and self.losses[stream].drop(toxic, self.rng):
                self.forward.lost += 1
                return
            if toxic.type == "latency":
                jitter = toxic["jitter"]
                delay_ms += toxic["latency"] + (self.rng.uniform(-jitter, jitter) if jitter else 0)
        if delay_ms <= 0 and not self.delayed[stream]:
            deliver(data)
            return
        queue = self.delayed[stream]
        if len(queue) >= MAX_DELAYED:
            self.forward.dropped += 1
            return
        clock = self.forward.clock
        due = max(clock.time() + delay_ms / 1000, queue[-1][0] if queue else 0.0)
        queue.append((due, data, deliver))
        self.plain = False
        if len(queue) == 1:
            clock.call_at(due, self._release, stream)

    def _release(self, stream: str) -> None:
        queue = self.delayed[stream]
        now = self.forward.clock.time()
        while queue and queue[0][0] <= now:
            _, data, deliver = queue.popleft()
            deliver(data)
        if queue and not self.closed:
            self.forward.clock.call_at(queue[0][0], self._release, stream)
        elif not queue:
            self._check_plain()

    @property
    def closed(self) -> bool:
        """True once the socket is closed."""
        return self.sock.fileno() < 0

    def close(self) -> None:
        """Stop watching and close the upstream socket; drop what latency held."""
        if not self.closed:
            self.forward.endpoint.unwatch_socket(self.sock)
            self.sock.close()
        for queue in self.delayed.values():
            queue.clear()
        self.forward.handler.table.unsubscribe(self)


class DatagramForward:
    """The NAT table of one datagram listener."""

    def __init__(self, handler: ForwardHandler, endpoint: DatagramEndpoint) -> None:
        self.handler = handler
        self.endpoint = endpoint
        self.clock = endpoint.clock
        self.sessions: OrderedDict[Any, ClientSession] = OrderedDict()
        self.dropped = self.lost = self.failed = 0
        self.timeout_s: float = handler.settings["udp_session_timeout_s"]
        self.tick = 0  # sweeps so far: a session records the tick of its last datagram
        self._sweeper: Any = None

    def received(self, data: bytes, peer: Peer) -> None:
        """A datagram from ``peer``: through its session, made on its first datagram."""
        if not self.handler.enabled:
            return
        session = self.sessions.get(peer)
        if session is None:
            session = self._open(peer)
            if session is None:
                return
        else:
            self.sessions.move_to_end(peer)
        session.send_up(data)

    def _open(self, peer: Peer) -> ClientSession | None:
        while len(self.sessions) >= max(self.endpoint.max_sessions, 1):
            _, oldest = self.sessions.popitem(last=False)
            oldest.close()
        table = self.handler.table
        try:
            session = ClientSession(self, peer, table.opened + 1)
        except (OSError, ValueError) as exc:
            self.failed += 1
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.endpoint.log.warning("upstream_failed", upstream=self.handler.settings[
                "upstream"], peer=str(peer), error=reason)  # fmt: skip
            return None
        table.subscribe(session)
        self.sessions[peer] = session
        if self._sweeper is None:
            self._sweeper = self.clock.call_later(self._sweep_interval_s, self._sweep)
        return session

    @property
    def _sweep_interval_s(self) -> float:
        return self.timeout_s / SWEEPS_PER_TIMEOUT

    def _sweep(self) -> None:
        """A session quiet for SWEEPS_PER_TIMEOUT sweeps has been quiet for the timeout
        (up to one interval more: a timeout of 60 s ends a session after 60 to 75 s)."""
        self._sweeper = None
        self.tick += 1
        for peer, session in list(self.sessions.items()):
            if self.tick - session.last_active > SWEEPS_PER_TIMEOUT:
                del self.sessions[peer]
                session.close()
        if self.sessions:
            self._sweeper = self.clock.call_later(self._sweep_interval_s, self._sweep)

    def close_all(self) -> None:
        """Close every session (the proxy went down, or the listener stopped)."""
        for session in self.sessions.values():
            session.close()
        self.sessions.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
