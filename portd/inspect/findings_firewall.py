"""doctor's firewall findings: the rules that drop, reject, may drop, redirect or queue a
new connection to the port, grouped by rule, saying which clients (other hosts, this
host) and addresses each one affects, with the command that lets the port through."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from portd.inspect.firewall import Packet, RuleRef, Verdict
from portd.inspect.reachability import Address

if TYPE_CHECKING:
    from portd.inspect.doctor import Facts
    from portd.inspect.findings import Finding

Severity = Callable[["Facts", Sequence[Address], bool], str]
Hits = dict[RuleRef, tuple[Verdict, list[tuple[Address, bool]]]]
CONSEQUENCE = {
    "drop": "clients wait, then time out",
    "reject": "clients get connection refused at once",
}


def firewall_findings(facts: Facts, severity: Severity) -> list[Finding]:
    """Findings from the judged rules (none when the firewall was not read)."""
    from portd.inspect.findings import Finding

    ruleset = facts.ruleset
    if ruleset is None or ruleset.judge is None:
        return []
    blocked: Hits = {}
    maybe: Hits = {}
    redirects: Hits = {}
    unknown: Hits = {}
    exceptions: dict[RuleRef, list[Verdict]] = {}
    for (address, from_here), decision in facts.decisions.items():
        if decision.blocked is not None:
            _hit(blocked, decision.blocked, address, from_here)
            exceptions.setdefault(decision.blocked.rule, []).extend(decision.exceptions)
        for verdict in decision.maybe_blocked:
            _hit(maybe, verdict, address, from_here)
        for verdict in decision.redirects:
            _hit(redirects, verdict, address, from_here)
        if decision.unknown is not None:
            _hit(unknown, decision.unknown, address, from_here)
    found = []
    for rule, (verdict, judged) in blocked.items():
        where, contradicted = _against_the_tests(facts, judged)
        if not where:
            continue
        blocking = _blocked(facts, severity, verdict, where,
                            list(dict.fromkeys(exceptions.get(rule, []))))  # fmt: skip
        if contradicted:
            shown = ", ".join(a.show(facts.target.port) for a in contradicted)
            blocking = blocking._replace(evidence=(*blocking.evidence,
                f"yet connect tests to {shown} passed: there the rule does not apply as listed "
                "(nft can list a rule without all its matches)"))  # fmt: skip
        found.append(blocking)
    target = facts.target
    what = f"{target.protocol} port {target.port}"
    for verdict, where in maybe.values():
        found.append(Finding("warning", "firewall_may_block",
                             f"the firewall may {verdict.action} {what} for some clients",
                             (str(verdict.rule), _clients(facts, where)), None))  # fmt: skip
    for verdict, where in redirects.values():
        found.append(Finding("note", "firewall_redirects", f"a NAT rule redirects {what}",
                             (str(verdict.rule), _clients(facts, where)), None))  # fmt: skip
    for verdict, where in unknown.values():
        found.append(Finding("warning", "firewall_unknown",
                             f"a firewall rule hands {what} to a program: its verdict is unknown",
                             (str(verdict.rule), _clients(facts, where)), None))  # fmt: skip
    return found


def _against_the_tests(
    facts: Facts, where: list[tuple[Address, bool]]
) -> tuple[list[tuple[Address, bool]], list[Address]]:
    """Evidence beats inference: an address this host's connect test reached is not
    blocked by the rule, whatever the listing says (for either kind of client)."""
    contradicted = [a for a, here in where if here and (attempt := facts.attempts.get(a))
                    and attempt.ok]  # fmt: skip
    return [(a, here) for a, here in where if a not in contradicted], contradicted


def _hit(hits: Hits, verdict: Verdict, address: Address, from_here: bool) -> None:
    hits.setdefault(verdict.rule, (verdict, []))[1].append((address, from_here))


def _blocked(facts: Facts, severity: Severity, verdict: Verdict,
             where: list[tuple[Address, bool]], exceptions: list[Verdict]) -> Finding:  # fmt: skip
    from portd.inspect.findings import Finding

    target = facts.target
    others = [address for address, from_here in where if not from_here]
    here = [address for address, from_here in where if from_here]
    who = "every client" if others and here else ("other hosts" if others else "this host")
    action = "drops" if verdict.action == "drop" else "rejects"
    summary = f"the firewall {action} {target.protocol} port {target.port} from {who}"
    evidence: list[str] = [str(verdict.rule), _clients(facts, where)]
    evidence.append(CONSEQUENCE.get(verdict.action, ""))
    evidence += [f"accepted before it only when: {e.rule}" for e in exceptions]
    passing = [a for a in others if (a, True) in facts.decisions
               and facts.decisions[(a, True)].blocked is None]  # fmt: skip
    if passing:
        evidence.append("connect tests from this host pass (another rule accepts lo): they do "
                        "not show what other hosts meet")  # fmt: skip
    first = where[0][0]
    packet = Packet(first.family, target.protocol, target.port, first.address, where[0][1])
    remedy = (
        facts.ruleset.remedy(verdict, packet) if facts.ruleset and facts.ruleset.remedy else None
    )
    level = "warning" if exceptions else severity(facts, others or here, bool(others))
    return Finding(level, "firewall_blocks", summary, tuple(e for e in evidence if e), remedy)


def _clients(facts: Facts, where: list[tuple[Address, bool]]) -> str:
    """``affects 192.0.2.10:80 from other hosts`` or ``affects every address, from other
    hosts and this host``."""
    port = facts.target.port
    asked = {(address, here) for (address, here) in facts.decisions}
    hit = set(where)
    if hit == asked:
        return "affects every address, from other hosts and this host"
    parts = []
    for from_here, label in ((False, "from other hosts"), (True, "from this host")):
        addresses = [a for a, here in where if here == from_here]
        everything = {a for a, here in asked if here == from_here}
        if addresses:
            shown = "every address" if set(addresses) == everything else ", ".join(
                a.show(port) for a in addresses)  # fmt: skip
            parts.append(f"{shown} {label}")
    return "affects " + "; ".join(parts)
