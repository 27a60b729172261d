"""Admission policy in isolation: allow/deny rules, token buckets, connection and UDP gates."""

from __future__ import annotations

import time

import pytest

from portd.endpoints.inet import InetPeer, inet_peer
from portd.endpoints.unix import UnixPeer
from portd.errors import OptionError
from portd.limits import (
    AccessList,
    ConnectionGate,
    DatagramGate,
    Limits,
    TokenBucket,
    parse_networks,
    peer_address,
)

RULES: list[tuple[list[str], list[str], str, bool]] = [
    # allow, deny, peer, admitted
    ([], [], "203.0.113.9", True),
    ([], ["203.0.113.0/24"], "203.0.113.9", False),
    ([], ["203.0.113.0/24"], "203.0.114.9", True),
    (["10.0.0.0/8"], [], "10.1.2.3", True),
    (["10.0.0.0/8"], [], "11.1.2.3", False),  # an allow list denies the rest
    (["10.0.0.0/8"], ["10.1.0.0/16"], "10.1.2.3", False),  # more specific deny
    (["10.0.0.0/8"], ["10.1.0.0/16"], "10.2.2.3", True),
    (["10.1.2.3"], ["10.0.0.0/8"], "10.1.2.3", True),  # more specific allow
    (["10.1.2.3"], ["10.0.0.0/8"], "10.1.2.4", False),
    (["10.0.0.0/8"], ["10.0.0.0/8"], "10.0.0.1", False),  # a tie: deny wins
    ([], ["0.0.0.0/0"], "127.0.0.1", False),
    (["127.0.0.0/8"], ["0.0.0.0/0"], "127.0.0.2", True),
    ([], ["::/0"], "127.0.0.1", True),  # an IPv6 rule never matches IPv4
    ([], ["0.0.0.0/0"], "::1", True),
    ([], ["::1"], "::1", False),
    (["fd00::/8"], [], "fd00::5", True),
    (["fd00::/8"], [], "fe80::5", False),
    (["fd00::/8"], ["fd00:1::/32"], "fd00:1::5", False),
    ([], ["192.0.2.1"], "::ffff:192.0.2.1", False),  # IPv4-mapped peers match as IPv4
    (["192.0.2.0/24"], [], "::ffff:192.0.2.77", True),
    ([], ["::ffff:192.0.2.1/128"], "192.0.2.1", True),  # ...so rules must be IPv4 too
    (["10.0.0.0/8", "192.168.0.0/16"], [], "192.168.4.4", True),
    (["2001:db8::/32"], ["2001:db8:bad::/48"], "2001:db8:bad::1", False),
    (["2001:db8::/32"], ["2001:db8:bad::/48"], "2001:db8:600d::1", True),
]


@pytest.mark.parametrize(("allow", "deny", "peer", "admitted"), RULES)
def test_most_specific_rule_wins(
    allow: list[str], deny: list[str], peer: str, admitted: bool
) -> None:
    access = AccessList(parse_networks(allow), parse_networks(deny))
    assert access.permits(peer_address(peer)) is admitted


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.0.0/8", "expected a list of addresses or CIDR ranges"),
        ([10], "expected a list of addresses or CIDR ranges"),
        (["10.0.0.0/33"], "'10.0.0.0/33' is not an IPv4/IPv6 address or CIDR range"),
        (["example.com"], "'example.com' is not an IPv4/IPv6 address or CIDR range"),
    ],
)
def test_bad_rules_say_what_is_allowed(value: object, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        parse_networks(value)


def test_a_bucket_spends_its_burst_then_refills_at_the_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=1024, burst=3, clock=lambda: now[0])  # binary: exact sums
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 2 / 1024  # two tokens' worth later
    assert [bucket.take() for _ in range(3)] == [True, True, False]


def ip(host: str, port: int = 40000) -> InetPeer:
    return inet_peer((host, port))


def test_connection_gate_caps_total_and_per_source_and_frees_on_release() -> None:
    gate = ConnectionGate(Limits(max_connections=3, max_connections_per_source=2))
    assert [gate.admit(ip("127.0.0.2")), gate.admit(ip("127.0.0.2"))] == [None, None]
    assert gate.admit(ip("127.0.0.2")) == "max_connections_per_source"
    assert gate.admit(ip("127.0.0.3")) is None
    assert gate.admit(ip("127.0.0.4")) == "max_connections"
    gate.release(ip("127.0.0.2"))
    assert gate.admit(ip("127.0.0.4")) is None
    assert dict(gate.refusals) == {"max_connections_per_source": 1, "max_connections": 1}


def test_ipv4_mapped_peers_count_as_their_ipv4_source() -> None:
    gate = ConnectionGate(Limits(max_connections_per_source=1))
    assert gate.admit(ip("192.0.2.1")) is None
    assert gate.admit(inet_peer(("::ffff:192.0.2.1", 1, 0, 0))) == "max_connections_per_source"


def test_connection_gate_checks_access_before_counting() -> None:
    gate = ConnectionGate(Limits(deny=parse_networks(["127.0.0.2"])))
    assert gate.admit(ip("127.0.0.2")) == "denied"
    assert gate.active == 0


def test_unix_peers_are_let_in_by_uid_and_gid_and_counted_per_uid() -> None:
    limits = Limits(allow_uids=frozenset({0, 1000}), allow_gids=frozenset({1000}),
                    max_connections_per_source=1)  # fmt: skip
    gate = ConnectionGate(limits)
    assert gate.admit(UnixPeer("", 10, 1000, 1000)) is None
    assert gate.admit(UnixPeer("", 11, 1000, 1000)) == "max_connections_per_source"
    assert gate.admit(UnixPeer("", 12, 1001, 1000)) == "denied"  # uid not allowed
    assert gate.admit(UnixPeer("", 13, 0, 0)) == "denied"  # gid not allowed
    assert dict(gate.tally.per_source) == {"uid 1000": 1}


def test_ip_rules_never_apply_to_unix_peers() -> None:
    gate = ConnectionGate(Limits(allow=parse_networks(["10.0.0.0/8"])))
    assert gate.admit(UnixPeer("", 10, 1000, 1000)) is None
    assert gate.admit(ip("127.0.0.1")) == "denied"


def test_a_successor_gate_counts_the_connections_of_the_one_it_replaces() -> None:
    """A reload's new listener shares the live counts: caps hold, releases land right."""
    old = ConnectionGate(Limits(max_connections_per_source=5))
    for _ in range(5):
        assert old.admit(ip("127.0.0.9")) is None
    new = ConnectionGate(Limits(max_connections_per_source=5), previous=old)
    assert new.admit(ip("127.0.0.9")) == "max_connections_per_source"
    old.release(ip("127.0.0.9"))  # an old connection ends: the new gate sees the room
    assert new.admit(ip("127.0.0.9")) is None
    assert new.active == 5


def test_connection_rate_refuses_past_the_burst_and_recovers() -> None:
    gate = ConnectionGate(Limits(connection_rate=50, connection_burst=2))
    assert [gate.admit(ip("127.0.0.1")) for _ in range(3)] == [None, None, "connection_rate"]
    assert gate.bucket is not None
    gate.bucket.stamp = time.monotonic() - 0.05  # 50 ms later: 2.5 tokens
    assert gate.admit(ip("127.0.0.1")) is None


def test_a_reload_with_the_same_rate_is_no_fresh_burst() -> None:
    limits = Limits(connection_rate=1, connection_burst=1)
    old = ConnectionGate(limits)
    assert old.admit(ip("127.0.0.1")) is None
    assert ConnectionGate(limits, previous=old).admit(ip("127.0.0.1")) == "connection_rate"


def test_datagram_gate_drops_low_source_ports_unless_allowed() -> None:
    assert DatagramGate(Limits()).admit(ip("127.0.0.1", 7)) == "low_source_port"
    assert DatagramGate(Limits()).admit(ip("127.0.0.1", 40000)) is None  # noqa: fixed-port
    assert DatagramGate(Limits(allow_low_source_ports=True)).admit(ip("127.0.0.1", 7)) is None


def test_datagram_rate_is_per_source() -> None:
    gate = DatagramGate(Limits(datagram_rate=1, datagram_burst=1))
    assert gate.admit(ip("127.0.0.2", 40000)) is None
    assert gate.admit(ip("127.0.0.2", 40001)) == "datagram_rate"
    assert gate.admit(ip("127.0.0.3", 40000)) is None  # another source has its own bucket
