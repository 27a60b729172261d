"""iptables rules as firewall.py's chains, from ``iptables-save`` and ``ip6tables-save``
(used when nft is not installed), each rule named by table, chain and rule number as
``iptables -L --line-numbers`` counts them.

Known to the judge: -p, -d, -i, --dport/--dports (tcp, udp, multiport), --state and
--ctstate (a new connection), --syn, addrtype --dst-type LOCAL; any other match (a
source, a rate limit, a set) is one portd cannot judge.
"""

from __future__ import annotations

import ipaddress
import shlex
import shutil
import socket
from collections.abc import Callable

from portd.inspect.firewall import Chain, Packet, Rule, RuleRef, Ruleset, Verdict, run_tool

# Where each table's built-in chains sit on the input path, with the kernel's priorities.
HOOKS = {
    ("raw", "PREROUTING"): ("prerouting", -300), ("mangle", "PREROUTING"): ("prerouting", -150),
    ("nat", "PREROUTING"): ("prerouting", -100), ("mangle", "INPUT"): ("input", -150),
    ("filter", "INPUT"): ("input", 0), ("security", "INPUT"): ("input", 50),
    ("nat", "INPUT"): ("input", 100),
}  # fmt: skip
TARGETS = {"ACCEPT": "accept", "DROP": "drop", "REJECT": "reject", "RETURN": "return",
           "DNAT": "redirect", "REDIRECT": "redirect", "TPROXY": "redirect",
           "NFQUEUE": "unknown", "QUEUE": "unknown"}  # fmt: skip
PASSING = frozenset({"LOG", "NFLOG", "ULOG", "MARK", "CONNMARK", "CT", "NOTRACK", "TCPMSS",
                     "TOS", "DSCP", "TTL", "HL", "SET", "AUDIT", "CLASSIFY", "TRACE",
                     "SECMARK", "CONNSECMARK", "CHECKSUM", "TEE", "IDLETIMER"})  # fmt: skip
KNOWN_MODULES = frozenset({"tcp", "udp", "multiport", "conntrack", "state", "comment",
                           "addrtype"})  # fmt: skip
PROTOCOLS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp"}


class SavedTables:
    """The tables of one ``iptables-save`` listing: table -> chain -> (policy, rules)."""

    def __init__(self, text: str) -> None:
        self.tables: dict[str, dict[str, tuple[str | None, list[str]]]] = {}
        table: dict[str, tuple[str | None, list[str]]] = {}
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("*"):
                table = self.tables.setdefault(line[1:], {})
            elif line.startswith(":"):
                name, policy = line[1:].split()[:2]
                table[name] = (None if policy == "-" else policy.lower(), [])
            elif line.startswith("-A "):
                name = line.split()[1]
                table.setdefault(name, (None, []))[1].append(line)

    def chains(self, packet: Packet) -> list[Chain]:
        """Every chain, each rule judged for ``packet``."""
        found = []
        for table, chains in self.tables.items():
            for name, (policy, lines) in chains.items():
                rules = tuple(
                    judge_line(line, packet, RuleRef(table, name, number, line), set(chains))
                    for number, line in enumerate(lines, 1)
                )
                hook, priority = HOOKS.get((table, name), (None, 0))
                found.append(Chain(table, name, rules, hook, priority, policy))
        return found


def read() -> Ruleset:
    """Run iptables-save and ip6tables-save (whichever is installed)."""
    listings: dict[int, SavedTables] = {}
    for family, tool in ((4, "iptables-save"), (6, "ip6tables-save")):
        if shutil.which(tool) is None:
            continue
        text, problem = run_tool([tool])
        if text is None:
            return Ruleset("iptables", None, None, problem)
        listings[family] = SavedTables(text)
    ufw = any(name.startswith("ufw") for saved in listings.values()
              for chains in saved.tables.values() for name in chains)  # fmt: skip

    def judge(packet: Packet) -> list[Chain]:
        saved = listings.get(packet.family)
        return saved.chains(packet) if saved is not None else []

    def let_through(verdict: Verdict, packet: Packet) -> str:
        return remedy(verdict, packet, ufw)

    return Ruleset("iptables", judge, let_through)


def judge_line(line: str, packet: Packet, ref: RuleRef, chains: set[str]) -> Rule:
    """One ``-A CHAIN ...`` line judged for ``packet`` (``chains``: the table's chains,
    which a -j may name)."""
    try:
        words = shlex.split(line)[2:]
    except ValueError:
        return Rule(ref, None, "unknown")
    match: bool | None = True
    negate = False
    index = 0
    while index < len(words):
        word = words[index]
        if word == "!":
            negate = True
            index += 1
            continue
        value = words[index + 1] if index + 1 < len(words) else ""
        if word in ("-j", "--jump", "-g", "--goto"):
            verdict = _target(value, chains, goto=word in ("-g", "--goto"))
            return Rule(ref, match, verdict, value if verdict in ("jump", "goto") else None)
        result, used = _option(word, value, packet)
        result = None if result is None else result != negate
        if result is False:
            return Rule(ref, False, None)
        if result is None:
            match = None
        negate = False
        index += 1 + used
    return Rule(ref, match, None)


def _target(target: str, chains: set[str], goto: bool) -> str | None:
    if target in chains:
        return "goto" if goto else "jump"
    if target in TARGETS:
        return TARGETS[target]
    return None if target in PASSING else "unknown"


def _option(option: str, value: str, packet: Packet) -> tuple[bool | None, int]:
    """(does the packet match, how many value tokens the option took)."""
    if option == "--syn":  # the first packet of a connection is a SYN
        return True, 0
    judge = OPTIONS.get(option)
    if judge is not None:
        return judge(value, packet), 1
    takes_value = bool(value) and not value.startswith("-")
    return None, 1 if takes_value else 0


def _protocol(value: str, packet: Packet) -> bool | None:
    return True if value == "all" else PROTOCOLS.get(value) == packet.protocol


def _module(value: str, _packet: Packet) -> bool | None:
    return True if value in KNOWN_MODULES else None


def _ports(value: str, packet: Packet) -> bool | None:
    return _in_ports(packet, value.split(","))


def _states(value: str, _packet: Packet) -> bool | None:
    return "NEW" in value.split(",")


def _destination_type(value: str, _packet: Packet) -> bool | None:
    return True if "LOCAL" in value.split(",") else None


def _comment(_value: str, _packet: Packet) -> bool | None:
    return True


def _in_ports(packet: Packet, parts: list[str]) -> bool | None:
    for part in parts:
        low, _, high = part.partition(":")
        try:
            first = int(low) if low.isdigit() else socket.getservbyname(low, packet.protocol)
            last = int(high) if high.isdigit() else first
        except OSError:
            return None
        if first <= packet.port <= last:
            return True
    return False


def _in_networks(address: str, value: str) -> bool | None:
    try:
        ip = ipaddress.ip_address(address)
        return any(ip in ipaddress.ip_network(part, strict=False) for part in value.split(","))
    except ValueError:
        return None


def _interface(name: str, packet: Packet) -> bool | None:
    matches_lo = "lo".startswith(name[:-1]) if name.endswith("+") else name == "lo"
    if packet.from_loopback:
        return matches_lo
    return False if name == "lo" else None


OPTIONS: dict[str, Callable[[str, Packet], bool | None]] = {
    "-p": _protocol, "--protocol": _protocol, "-m": _module, "--match": _module,
    "-d": lambda value, packet: _in_networks(packet.address, value),
    "--destination": lambda value, packet: _in_networks(packet.address, value),
    "-i": _interface, "--in-interface": _interface,
    "--dport": _ports, "--destination-port": _ports, "--dports": _ports,
    "--destination-ports": _ports, "--state": _states, "--ctstate": _states,
    "--dst-type": _destination_type, "--comment": _comment,
}  # fmt: skip


def remedy(verdict: Verdict, packet: Packet, ufw: bool) -> str:
    """The commands that let the packet through (ufw's when ufw owns the rules)."""
    if ufw:
        return f"ufw allow {packet.port}/{packet.protocol}"
    tool = "iptables" if packet.family == 4 else "ip6tables"
    rule = verdict.rule
    table = "" if rule.table == "filter" else f"-t {rule.table} "
    accept = f"-p {packet.protocol} --dport {packet.port} -j ACCEPT"
    if rule.handle is None:
        return f"{tool} {table}-I {rule.chain} {accept}"
    return (f"{tool} {table}-D {rule.chain} {rule.handle}, or accept it first: "
            f"{tool} {table}-I {rule.chain} {rule.handle} {accept}")  # fmt: skip
