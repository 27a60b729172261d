"""nftables rules as firewall.py's chains: ``nft -j list ruleset`` judged for one packet,
named with the text and handles of ``nft -a list ruleset``.

Known to the judge: transport ports (tcp, udp, th; numbers, service names, ranges,
anonymous and named sets, verdict maps), ip/ip6 protocol and destination, meta l4proto,
nfproto, iif/iifname, ct state (a new connection), fib daddr type. Anything else (a
source address, a rate limit, a mark, an xt match) is a match portd cannot judge.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any

from portd.inspect.firewall import Chain, Packet, Rule, RuleRef, Ruleset, Verdict, run_tool

FAMILIES = {4: ("ip", "inet"), 6: ("ip6", "inet")}
OTHER_TRANSPORTS = frozenset({"icmp", "icmpv6", "sctp", "dccp", "udplite", "esp", "ah", "igmp"})
PROTOCOL_NUMBERS = {6: "tcp", 17: "udp"}
IGNORED = frozenset({"counter", "log", "mangle", "notrack", "set", "ct", "meta", "snat",
                     "masquerade", "flow", "dup", "fwd", "secmark", "synproxy"})  # fmt: skip
CONDITIONS = frozenset({"limit", "quota", "numgen", "connlimit"})
VERDICTS = frozenset({"accept", "drop", "reject", "jump", "goto", "return"})
NAT = frozenset({"dnat", "redirect", "tproxy"})
MISMATCH, UNKNOWN = object(), object()


def read() -> Ruleset:
    """Run ``nft`` twice (JSON to judge, text to quote); say why when it cannot."""
    data, problem = run_tool(["nft", "-j", "list", "ruleset"])
    text, _ = run_tool(["nft", "-a", "list", "ruleset"]) if data is not None else (None, None)
    if data is None:
        return Ruleset("nftables", None, None, problem)
    try:
        parsed = NftRuleset(json.loads(data), text or "")
    except (ValueError, KeyError, TypeError) as exc:
        return Ruleset("nftables", None, None, f"nft -j printed what portd cannot read: {exc!r}")

    def let_through(verdict: Verdict, packet: Packet) -> str:
        return remedy(verdict, packet, parsed.manager)

    return Ruleset("nftables", parsed.judge, let_through)


def rule_texts(text: str) -> dict[tuple[str, str, int], str]:
    """``nft -a list ruleset`` -> {("inet t", "input", 6): "ct state ... accept"}."""
    texts: dict[tuple[str, str, int], str] = {}
    table = chain = ""
    for raw in text.splitlines():
        line = raw.strip()
        body, _, handle = line.partition(" # handle ")
        words = body.split()
        if words[:1] == ["table"] and len(words) >= 3:
            table, chain = f"{words[1]} {words[2]}", ""
        elif words[:1] == ["chain"] and len(words) >= 2:
            chain = words[1]
        elif chain and handle.isdigit():
            texts[(table, chain, int(handle))] = body
        elif line == "}" and chain:
            chain = ""
    return texts


class NftRuleset:
    """One ``nft -j`` listing, ready to judge packets."""

    def __init__(self, data: dict[str, Any], text: str) -> None:
        self.chains: list[dict[str, Any]] = []
        self.rules: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.sets: dict[tuple[str, str], list[Any]] = {}
        self.texts = rule_texts(text)
        self.manager: str | None = None
        for item in data["nftables"]:
            for kind, body in item.items():
                self._add(kind, body)

    def _add(self, kind: str, body: dict[str, Any]) -> None:
        table = f"{body.get('family')} {body.get('table', body.get('name'))}"
        if kind == "table" and body.get("name") == "firewalld":
            self.manager = "firewalld"
        elif kind == "chain":
            self.chains.append(body)
        elif kind == "rule":
            self.rules.setdefault((table, body["chain"]), []).append(body)
        elif kind in ("set", "map"):
            self.sets[(table, body["name"])] = list(body.get("elem", []))

    def judge(self, packet: Packet) -> list[Chain]:
        """Every chain of the packet's families, each rule judged for this packet."""
        families = FAMILIES[packet.family]
        found = []
        for chain in self.chains:
            if chain["family"] not in families:
                continue
            table = f"{chain['family']} {chain['table']}"
            rules = tuple(self._rule(table, rule, packet)
                          for rule in self.rules.get((table, chain["name"]), []))  # fmt: skip
            found.append(Chain(table, chain["name"], rules, chain.get("hook"),
                               int(chain.get("prio", 0)), chain.get("policy")))  # fmt: skip
        return found

    def _rule(self, table: str, rule: dict[str, Any], packet: Packet) -> Rule:
        text = self.texts.get((table, rule["chain"], rule["handle"]), f"handle {rule['handle']}")
        ref = RuleRef(table, rule["chain"], rule["handle"], text)
        match: bool | None = True
        for statement in rule.get("expr", []):
            ((kind, body),) = statement.items()
            if kind == "match":
                result = self._match(table, body, packet)
                if result is False:
                    return Rule(ref, False, None)
                match = None if result is None else match
            elif kind in CONDITIONS or (kind == "xt" and body.get("type") == "match"):
                match = None
            elif kind in VERDICTS:
                target = body.get("target") if isinstance(body, dict) else None
                return Rule(ref, match, kind, target)
            elif kind == "vmap":
                return self._vmap(table, ref, match, body, packet)
            elif kind in NAT:
                return Rule(ref, match, "redirect")
            elif kind not in IGNORED:  # queue, xt targets, anything new: judged by others
                return Rule(ref, match, "unknown")
        return Rule(ref, match, None)

    def _vmap(self, table: str, ref: RuleRef, match: bool | None, body: dict[str, Any],
              packet: Packet) -> Rule:  # fmt: skip
        value = left_value(body["key"], packet)
        data = body["data"]
        elements = self.sets.get((table, data[1:]), []) if isinstance(data, str) else data["set"]
        for key, verdict in elements:
            found = member(value, key, packet, self._elements(table))
            if found is None:
                return Rule(ref, None, "unknown")
            if found:
                ((kind, target),) = verdict.items()
                return Rule(ref, match, kind, (target or {}).get("target"))
        return Rule(ref, False, None)

    def _elements(self, table: str) -> dict[str, list[Any]]:
        return {name: elements for (owner, name), elements in self.sets.items() if owner == table}

    def _match(self, table: str, body: dict[str, Any], packet: Packet) -> bool | None:
        value = left_value(body["left"], packet)
        if value is MISMATCH:
            return False
        found = member(value, body["right"], packet, self._elements(table))
        operator = body.get("op", "==")
        if operator in ("==", "in"):
            return found
        if operator == "!=":
            return None if found is None else not found
        return None


def left_value(left: Any, packet: Packet) -> Any:
    """What the packet carries in the field a match reads; MISMATCH when the match cannot
    apply to this packet at all (``tcp dport`` for a UDP packet), UNKNOWN when unknowable."""
    if not isinstance(left, dict) or len(left) != 1:
        return UNKNOWN
    ((kind, body),) = left.items()
    if kind == "payload":
        return _payload(body.get("protocol"), body.get("field"), packet)
    if kind == "meta":
        return _meta(body.get("key"), packet)
    if kind == "ct":
        return {"state": "new", "direction": "original"}.get(body.get("key"), UNKNOWN)
    if kind == "fib" and body.get("result") == "type" and body.get("flags") == ["daddr"]:
        return "local"
    return UNKNOWN


def _payload(protocol: Any, field: Any, packet: Packet) -> Any:
    if protocol in ("tcp", "udp", "th"):
        if protocol not in ("th", packet.protocol):
            return MISMATCH
        return packet.port if field == "dport" else UNKNOWN
    if protocol in ("ip", "ip6"):
        if (protocol == "ip") != (packet.family == 4):
            return MISMATCH
        return {"daddr": packet.address, "protocol": packet.protocol,
                "nexthdr": packet.protocol}.get(field, UNKNOWN)  # fmt: skip
    return MISMATCH if protocol in OTHER_TRANSPORTS else UNKNOWN


def _meta(key: Any, packet: Packet) -> Any:
    if key == "l4proto":
        return packet.protocol
    if key == "nfproto":
        return f"ipv{packet.family}"
    if key == "protocol":
        return "ip" if packet.family == 4 else "ip6"
    if key in ("iif", "iifname"):
        return "lo" if packet.from_loopback else Interface()
    if key == "iiftype":
        return "loopback" if packet.from_loopback else UNKNOWN
    return UNKNOWN


class Interface:
    """Another host's packet arrives on some interface other than lo: which, portd cannot
    tell (a rule for ``eth0`` may or may not apply)."""


def member(value: Any, right: Any, packet: Packet, sets: dict[str, list[Any]]) -> bool | None:
    """Whether ``value`` is, or is in, ``right`` (a scalar, range, prefix, set, or @set)."""
    if value is UNKNOWN:
        return None
    if isinstance(right, str) and right.startswith("@"):
        right = {"set": sets.get(right[1:])}
        if right["set"] is None:
            return None
    if isinstance(right, dict) and "set" in right:
        right = right["set"]
    if isinstance(right, list):
        results = [member(value, element, packet, sets) for element in right]
        return True if True in results else (None if None in results else False)
    if isinstance(right, dict) and "elem" in right:
        return member(value, right["elem"].get("val"), packet, sets)
    return _equal(value, right, packet)


def _equal(value: Any, right: Any, packet: Packet) -> bool | None:
    if isinstance(value, Interface):
        return False if right == "lo" else None
    if isinstance(value, int):
        return _in_ports(value, right, packet)
    if isinstance(right, dict) and ("prefix" in right or "range" in right):
        return _in_addresses(value, right)
    if isinstance(right, int):
        right = PROTOCOL_NUMBERS.get(right, right)
    if isinstance(value, str) and isinstance(right, str) and right.endswith("*"):
        return value.startswith(right[:-1])
    return bool(value == right)


def _in_ports(port: int, right: Any, packet: Packet) -> bool | None:
    if isinstance(right, dict) and "range" in right:
        low, high = (_port(bound, packet) for bound in right["range"])
        return None if low is None or high is None else low <= port <= high
    number = _port(right, packet)
    return None if number is None else port == number


def _port(value: Any, packet: Packet) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        try:
            return socket.getservbyname(value, packet.protocol)
        except OSError:
            return None
    return None


def _in_addresses(address: str, right: dict[str, Any]) -> bool | None:
    try:
        ip = ipaddress.ip_address(address)
        if "prefix" in right:
            prefix = right["prefix"]
            return ip in ipaddress.ip_network(f"{prefix['addr']}/{prefix['len']}", strict=False)
        low, high = (ipaddress.ip_address(bound) for bound in right["range"])
    except (ValueError, TypeError, KeyError):
        return None
    if low.version != ip.version or high.version != ip.version:
        return False
    return low <= ip <= high  # type: ignore[operator]


def remedy(verdict: Verdict, packet: Packet, manager: str | None) -> str:
    """The commands that let the packet through: delete or precede the rule, or accept
    the port before a drop policy (firewall-cmd when firewalld owns the rules)."""
    accept = f"{packet.protocol} dport {packet.port} accept"
    if manager == "firewalld":
        return (f"firewall-cmd --add-port={packet.port}/{packet.protocol} "
                "(add --permanent to keep it)")  # fmt: skip
    rule = verdict.rule
    if rule.handle is None:
        return f"nft insert rule {rule.table} {rule.chain} {accept}"
    where = f"{rule.table} {rule.chain}"
    return (f"nft delete rule {where} handle {rule.handle}, or accept it first: "
            f"nft insert rule {where} position {rule.handle} {accept}")  # fmt: skip
