"""The firewall judge, sans IO: real `nft -j`/`nft -a` and `iptables-save` listings
(tests/inspect/data, made from the .nft file and the commands in this module's tests)
judged for one packet at a time, from another host and from this one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from portd.endpoints.base import ProtocolName
from portd.inspect.firewall import Decision, Packet, decide
from portd.inspect.iptables import SavedTables
from portd.inspect.iptables import remedy as iptables_remedy
from portd.inspect.nftables import NftRuleset
from portd.inspect.nftables import remedy as nft_remedy

DATA = Path(__file__).with_name("data")
NFT = NftRuleset(
    json.loads((DATA / "nft-ruleset.json").read_text(encoding="utf-8")),
    (DATA / "nft-ruleset.txt").read_text(encoding="utf-8"),
)
IPTABLES = {4: SavedTables((DATA / "iptables-save.txt").read_text(encoding="utf-8")),
            6: SavedTables((DATA / "ip6tables-save.txt").read_text(encoding="utf-8"))}  # fmt: skip


def packet(port: int, protocol: ProtocolName = "tcp", *, address: str = "192.0.2.10",
           local: bool = False) -> Packet:  # fmt: skip
    return Packet(6 if ":" in address else 4, protocol, port, address, local)


def nft(port: int, protocol: ProtocolName = "tcp", **kwargs: object) -> Decision:
    return decide(NFT.judge(packet(port, protocol, **kwargs)))  # type: ignore[arg-type]


def iptables(port: int, protocol: ProtocolName = "tcp", **kwargs: object) -> Decision:
    sent = packet(port, protocol, **kwargs)  # type: ignore[arg-type]
    return decide(IPTABLES[sent.family].chains(sent))


def named(decision: Decision) -> tuple[str | None, int | None]:
    """(action, handle) of the verdict that blocks, (None, None) when it gets through."""
    blocked = decision.blocked
    return (blocked.action, blocked.rule.handle) if blocked else (None, None)


@pytest.mark.parametrize(
    ("port", "protocol", "address", "expected"),
    [
        (8443, "tcp", "192.0.2.10", ("reject", 13)),  # in the named interval set
        (9005, "tcp", "192.0.2.10", ("reject", 13)),
        (8081, "tcp", "192.0.2.10", ("drop", 14)),  # a named verdict map
        (7000, "tcp", "192.0.2.10", (None, None)),  # an anonymous verdict map
        (7001, "tcp", "192.0.2.10", ("drop", None)),  # jumps, returns, then the policy
        (443, "tcp", "192.0.2.10", (None, None)),  # an anonymous set with a range
        (5050, "tcp", "192.0.2.10", (None, None)),
        (53, "udp", "192.0.2.10", (None, None)),  # meta l4proto { tcp, udp } th dport
        (6000, "tcp", "192.0.2.10", ("drop", 20)),  # fib daddr type local
        (9999, "tcp", "fd00:9::10", ("drop", 21)),  # ip6 daddr prefix, dport !=
        (22, "tcp", "fd00:9::10", (None, None)),
        (9999, "tcp", "192.0.2.10", ("drop", None)),  # the drop policy
    ],
)
def test_nft_names_the_rule_that_decides(
    port: int, protocol: ProtocolName, address: str, expected: tuple[str | None, int | None]
) -> None:
    assert named(nft(port, protocol, address=address)) == expected


def test_nft_loopback_is_accepted_where_other_hosts_are_dropped() -> None:
    assert named(nft(9999, local=True)) == (None, None)  # iif lo accept
    assert str(nft(9999).blocked.rule) == "table inet t chain input: policy drop"  # type: ignore[union-attr]


def test_nft_uncertain_matches_are_exceptions_not_verdicts() -> None:
    """``ip saddr 10.0.0.0/8 tcp dport 8080 accept``: only some clients get through."""
    decision = nft(8080)
    assert named(decision) == ("drop", None)
    assert [str(v.rule) for v in decision.exceptions] == [
        "table inet t chain input handle 12: ip saddr 10.0.0.0/8 tcp dport 8080 accept"
    ]
    limited = nft(80, "udp")  # udp dport 80 limit rate 10/second accept
    assert named(limited) == ("drop", None)
    assert [v.rule.handle for v in limited.exceptions] == [19]


def test_nft_redirects_are_reported() -> None:
    decision = nft(80)
    assert named(decision) == (None, None)  # tcp dport { 80, 443, ... } accept
    assert [(v.rule.handle, v.certain) for v in decision.redirects] == [(24, True)]
    to_other = nft(81)  # dnat only for ip daddr 192.0.2.1
    assert to_other.redirects == ()


def test_nft_remedies() -> None:
    blocked = nft(8443).blocked
    assert blocked is not None
    assert nft_remedy(blocked, packet(8443), None) == (
        "nft delete rule inet t input handle 13, or accept it first: "
        "nft insert rule inet t input position 13 tcp dport 8443 accept"
    )
    policy = nft(9999).blocked
    assert policy is not None
    assert nft_remedy(policy, packet(9999), None) == (
        "nft insert rule inet t input tcp dport 9999 accept"
    )
    assert nft_remedy(policy, packet(9999), "firewalld") == (
        "firewall-cmd --add-port=9999/tcp (add --permanent to keep it)"
    )


@pytest.mark.parametrize(
    ("port", "protocol", "address", "expected"),
    [
        (22, "tcp", "192.0.2.10", (None, None)),
        (8050, "tcp", "192.0.2.10", (None, None)),  # multiport range
        (9001, "tcp", "192.0.2.10", ("reject", 6)),
        (9002, "tcp", "192.0.2.10", ("drop", 1)),  # in the user chain it jumps to
        (9003, "tcp", "192.0.2.10", ("drop", None)),  # LOG passes on, then the policy
        (9004, "tcp", "fd00:9::10", ("drop", 1)),  # ip6tables
        (9005, "tcp", "fd00:9::10", (None, None)),
    ],
)
def test_iptables_names_the_rule_that_decides(
    port: int, protocol: ProtocolName, address: str, expected: tuple[str | None, int | None]
) -> None:
    assert named(iptables(port, protocol, address=address)) == expected


def test_iptables_loopback_exceptions_and_redirects() -> None:
    assert named(iptables(9003, local=True)) == (None, None)  # -i lo -j ACCEPT
    uncertain = iptables(9000)
    assert [v.rule.text for v in uncertain.exceptions] == [
        "-A INPUT -s 10.0.0.0/8 -p tcp -m tcp --dport 9000 -j ACCEPT"
    ]
    assert [str(v.rule) for v in iptables(8081).redirects] == [
        "table nat chain PREROUTING handle 1: "
        "-A PREROUTING -p tcp -m tcp --dport 8081 -j REDIRECT --to-ports 8080"
    ]


def test_iptables_remedies() -> None:
    blocked = iptables(9001).blocked
    assert blocked is not None
    assert iptables_remedy(blocked, packet(9001), ufw=False) == (
        "iptables -D INPUT 6, or accept it first: iptables -I INPUT 6 -p tcp --dport 9001 -j ACCEPT"
    )
    assert iptables_remedy(blocked, packet(9001), ufw=True) == "ufw allow 9001/tcp"
