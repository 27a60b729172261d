"""Admission policy for one listener: allow/deny lists, connection caps, rates, UDP gates.

Everything here is decided from the peer's address alone, before a transport or any
handler code exists, so a refused client costs an accept() and a close(). Limits pause
and resume; they never disable a listener (unlike systemd's trigger limit or xinetd's
cps). Every refusal is counted by reason; the listener logs each reason at most once a
second.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from portd.errors import OptionError
from portd.options import Option

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_TRACKED_SOURCES = 65536  # per-source UDP buckets: bounded even under spoofed floods
LOW_PORT_END = 1024


def parse_networks(value: Any) -> tuple[Network, ...]:
    """``["10.0.0.0/8", "::1", "192.0.2.7"]`` -> networks (a bare address is one host).

    Raises:
        OptionError: not a list of strings, or an entry that is not an address or CIDR.
    """
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise OptionError('expected a list of addresses or CIDR ranges, e.g. ["10.0.0.0/8"]')
    networks = []
    for item in value:
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise OptionError(f"{item!r} is not an IPv4/IPv6 address or CIDR range") from None
    return tuple(networks)


def parse_ids(value: Any) -> frozenset[int]:
    """``[0, 1000]`` -> the ids (names are resolved by the socket keys, not here).

    Raises:
        OptionError: not a list of integers 0 to 2^32-2.
    """
    if not isinstance(value, list) or not all(
        isinstance(item, int) and not isinstance(item, bool) and 0 <= item < 2**32 - 1
        for item in value
    ):
        raise OptionError("expected a list of numeric ids, e.g. [0, 1000]")
    return frozenset(value)


LIMIT_OPTIONS = (
    Option("max_connections", int, 1024, "connections served at once; the next is closed",
           minimum=1, maximum=1_000_000),
    Option("max_connections_per_source", int, 0, "per peer address (0: no limit)",
           minimum=0, maximum=1_000_000),
    Option("connection_rate", float, 0.0, "new connections per second, token bucket (0: off)",
           minimum=0, maximum=1e9),
    Option("connection_burst", int, 0, "bucket size (0: one second of connection_rate)",
           minimum=0, maximum=1_000_000_000),
    Option("idle_timeout_s", float, 0.0, "close after this long without a byte either way (0: off)",
           minimum=0, maximum=86400 * 7),
    Option("send_timeout_s", float, 60.0, "drop a peer that stops reading for this long (0: off)",
           minimum=0, maximum=86400 * 7),
    Option("allow", list, [], "addresses/CIDRs let in (empty: everyone not denied)",
           convert=parse_networks),
    Option("deny", list, [], "addresses/CIDRs kept out; the most specific rule wins",
           convert=parse_networks),
    Option("datagram_rate", float, 0.0, "UDP datagrams per second per source (0: off)",
           minimum=0, maximum=1e9),
    Option("datagram_burst", int, 0, "per-source bucket size (0: one second of datagram_rate)",
           minimum=0, maximum=1_000_000_000),
    Option("allow_low_source_ports", bool, False,
           "accept UDP from source ports below 1024 (echo/chargen loops come from there)"),
    Option("allow_uids", list, [], "unix peers let in by uid (SO_PEERCRED; empty: any)",
           convert=parse_ids),
    Option("allow_gids", list, [], "unix peers let in by primary gid (empty: any)",
           convert=parse_ids),
)  # fmt: skip
LIMIT_KIND_ONLY = {"allow": "inet", "deny": "inet", "allow_low_source_ports": "inet",
                   "allow_uids": "unix", "allow_gids": "unix"}  # fmt: skip
TCP_ONLY = frozenset({"max_connections", "max_connections_per_source", "connection_rate",
                      "connection_burst", "idle_timeout_s", "send_timeout_s"})  # fmt: skip
UDP_ONLY = frozenset({"datagram_rate", "datagram_burst", "allow_low_source_ports"})


class Limits(NamedTuple):
    """A listener's validated limit settings."""

    max_connections: int = 1024
    max_connections_per_source: int = 0
    connection_rate: float = 0.0
    connection_burst: int = 0
    idle_timeout_s: float = 0.0
    send_timeout_s: float = 60.0
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()
    datagram_rate: float = 0.0
    datagram_burst: int = 0
    allow_low_source_ports: bool = False
    allow_uids: frozenset[int] = frozenset()
    allow_gids: frozenset[int] = frozenset()


def peer_address(host: str) -> Address:
    """The peer's address; IPv4-mapped IPv6 (::ffff:1.2.3.4) is the IPv4 address."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class AccessList:
    """allow/deny by the most specific matching rule; deny wins a tie.

    No rule matches: let in, unless an allow list exists (then only what it allows).
    """

    def __init__(self, allow: Sequence[Network], deny: Sequence[Network]) -> None:
        rules = [(net, True) for net in allow] + [(net, False) for net in deny]
        # Longest prefix first; at equal length deny (False) sorts before allow (True).
        self.rules = sorted(rules, key=lambda rule: (-rule[0].prefixlen, rule[1]))
        self.default = not allow

    def permits(self, address: Address) -> bool:
        """True when ``address`` may connect."""
        for network, allowed in self.rules:
            if address.version == network.version and address in network:
                return allowed
        return self.default


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    __slots__ = ("burst", "clock", "rate", "stamp", "tokens")

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst or max(1, round(rate)))
        self.tokens = self.burst
        self.clock = clock
        self.stamp = clock()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class PeerRules:
    """Who may connect: IP rules for IP peers, uid/gid lists for unix peers."""

    def __init__(self, limits: Limits) -> None:
        self.ip = AccessList(limits.allow, limits.deny) if limits.allow or limits.deny else None
        self.uids = limits.allow_uids
        self.gids = limits.allow_gids

    @classmethod
    def of(cls, limits: Limits) -> PeerRules | None:
        """The rules, or None when there are none (the common case costs nothing)."""
        if limits.allow or limits.deny or limits.allow_uids or limits.allow_gids:
            return cls(limits)
        return None

    def permits(self, peer: Any) -> bool:
        """True when ``peer`` may connect or send."""
        if peer.kind == "inet":
            return self.ip is None or self.ip.permits(peer_address(peer.host))
        return (not self.uids or peer.uid in self.uids) and (not self.gids or peer.gid in self.gids)


class Tally:
    """The live admitted connections of a listener, total and per source.

    Shared by the gates of a listener and of the listener that replaces it on a reload,
    so connections admitted before still count against the caps after, and their
    releases land in the same place. Workers share theirs across processes (a subclass
    in portd.workers.tally), so the caps hold for the whole daemon.
    """

    __slots__ = ("active", "per_source")

    def __init__(self) -> None:
        self.active = 0
        # A plain dict: Counter's missing-key and delete paths are Python code, and this
        # runs twice per connection.
        self.per_source: dict[str, int] = {}

    def count(self) -> int:
        """Connections counted now."""
        return self.active

    def of(self, source: str) -> int:
        """Connections of ``source`` counted now."""
        return self.per_source.get(source, 0)

    def add(self, source: str) -> None:
        """One more connection of ``source``."""
        self.active += 1
        per_source = self.per_source
        per_source[source] = per_source.get(source, 0) + 1

    def remove(self, source: str) -> None:
        """A connection of ``source`` ended."""
        self.active -= 1
        per_source = self.per_source
        left = per_source[source] - 1
        if left:
            per_source[source] = left
        else:
            del per_source[source]


class ConnectionGate:
    """Decides, per accepted stream peer, whether it is served; counts what it refuses.

    Runs once per connection, so it parses the peer's address only when allow/deny
    rules need it. Every connection is counted per source (IP address, unix uid), cap or
    not, so a cap a reload sets holds for the connections already open.
    """

    def __init__(
        self, limits: Limits, previous: ConnectionGate | None = None, tally: Tally | None = None
    ) -> None:
        self.limits = limits
        self.rules = PeerRules.of(limits)
        self.tally: Tally = (
            previous.tally if previous is not None else tally if tally is not None else Tally()
        )
        rate, burst = limits.connection_rate, limits.connection_burst
        if (
            previous is not None
            and previous.bucket is not None
            and rate
            and (
                (rate, burst) == (previous.limits.connection_rate, previous.limits.connection_burst)
            )
        ):
            self.bucket: TokenBucket | None = previous.bucket  # a reload is no fresh burst
        else:
            self.bucket = TokenBucket(rate, burst) if rate else None
        self.refusals: Counter[str] = Counter()

    @property
    def active(self) -> int:
        """Connections admitted and not released."""
        return self.tally.count()

    def admit(self, peer: Any) -> str | None:
        """None when the peer is admitted (and counted), else the refusal reason."""
        source = peer.source
        reason = self._check(peer, source)
        if reason is not None:
            self.refusals[reason] += 1
            return reason
        self.tally.add(source)
        return None

    def _check(self, peer: Any, source: str) -> str | None:
        if self.rules is not None and not self.rules.permits(peer):
            return "denied"
        if self.tally.count() >= self.limits.max_connections:
            return "max_connections"
        cap = self.limits.max_connections_per_source
        if cap and self.tally.of(source) >= cap:
            return "max_connections_per_source"
        if self.bucket is not None and not self.bucket.take():
            return "connection_rate"
        return None

    def release(self, peer: Any) -> None:
        """An admitted connection ended."""
        self.tally.remove(peer.source)


class DatagramGate:
    """Decides, per datagram, whether the handler sees it (the low-port check is an
    integer comparison; addresses are parsed only when rules or rates need them)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.rules = PeerRules.of(limits)
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.refusals: Counter[str] = Counter()

    def admit(self, peer: Any) -> str | None:
        """None when the datagram is passed on, else the reason it is dropped."""
        reason = self._check(peer)
        if reason is not None:
            self.refusals[reason] += 1
        return reason

    def _check(self, peer: Any) -> str | None:
        if (
            peer.kind == "inet"
            and peer[1] < LOW_PORT_END
            and not self.limits.allow_low_source_ports
        ):
            return "low_source_port"
        if self.rules is not None and not self.rules.permits(peer):
            return "denied"
        if self.limits.datagram_rate and not self._bucket(peer.source).take():
            return "datagram_rate"
        return None

    def _bucket(self, key: str) -> TokenBucket:
        return source_bucket(
            self.buckets, key, self.limits.datagram_rate, self.limits.datagram_burst
        )


def source_bucket(
    buckets: OrderedDict[str, TokenBucket], key: str, rate: float, burst: int
) -> TokenBucket:
    """The token bucket of one source; at most MAX_TRACKED_SOURCES are kept (the least
    recently seen source is forgotten first), so spoofed sources cannot grow the map."""
    bucket = buckets.get(key)
    if bucket is None:
        if len(buckets) >= MAX_TRACKED_SOURCES:
            buckets.popitem(last=False)
        bucket = TokenBucket(rate, burst)
        buckets[key] = bucket
    else:
        buckets.move_to_end(key)
    return bucket


class RefusalLog:
    """Logs each refusal reason at most once a second, with the count since the last line.

    Refusals that arrive within the second after a line are not lost: a timer writes
    their count once the second is over, and :meth:`flush` writes what is still pending
    when the listener closes, so the counts in the log add up to the refusals made.
    """

    def __init__(
        self, log: Any, event: str = "connection_refused", interval_s: float = 1.0
    ) -> None:
        self.log = log
        self.event = event
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._pending: Counter[str] = Counter()
        self._last_peer: dict[str, str] = {}
        self._timers: dict[str, Any] = {}

    def refused(self, reason: str, peer: str) -> None:
        """Count one refusal; write a line now if this reason has been quiet for a
        second, else make sure one is written when the second is over."""
        self._pending[reason] += 1
        self._last_peer[reason] = peer
        now = time.monotonic()
        due = self._last.get(reason, -self.interval_s) + self.interval_s
        if now >= due:
            self._write(reason, now)
        elif reason not in self._timers:
            self._timers[reason] = _call_later(due - now, self._write_due, reason)

    def flush(self) -> None:
        """Write every pending count now (the listener is closing)."""
        for timer in self._timers.values():
            if timer is not None:
                timer.cancel()
        self._timers.clear()
        for reason in list(self._pending):
            self._write(reason, time.monotonic())

    def _write_due(self, reason: str) -> None:
        self._timers.pop(reason, None)
        self._write(reason, time.monotonic())

    def _write(self, reason: str, now: float) -> None:
        count = self._pending.pop(reason, 0)
        if count:
            self._last[reason] = now
            self.log.warning(
                self.event, reason=reason, count=count, last_peer=self._last_peer.pop(reason, "")
            )


def _call_later(delay_s: float, callback: Any, *args: Any) -> Any:
    """A timer on the running loop; None outside one (then only flush() writes)."""
    import asyncio  # lazily: limits is imported by commands that run no event loop

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop.call_later(delay_s, callback, *args)
