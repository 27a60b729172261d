"""doctor's report: the text a person reads (who listens, what each address answers,
then the findings, worst first) and the same as JSON."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from portd.inspect.findings import outcome_text
from portd.inspect.services import service_name

if TYPE_CHECKING:
    from portd.inspect.doctor import Facts, PortSocket
    from portd.inspect.findings import Finding

TAGS = {"blocks": "BLOCKS", "warning": "WARNING", "note": "NOTE"}
INDENT = " " * 9


def print_text(facts: Facts, found: list[Finding], not_checked: list[tuple[str, str]],
               code: int) -> None:  # fmt: skip
    """The report for a person."""
    print(f"portd doctor: {facts.target}")
    if not facts.remote:
        print("\nlistening:")
        for sock in facts.listeners:
            print(f"  {sock.where}  {sock.owner_text()}{_queue(sock)}")
        if not facts.listeners:
            print("  nothing")
    print("\nconnect from this host:")
    width = max((len(a.show(facts.target.port)) for a in facts.addresses), default=0)
    for address in facts.addresses:
        where = address.interface or "-"
        outcome = outcome_text(facts, address)
        print(f"  {address.show(facts.target.port):<{width}}  {where:<6} {outcome}")
    print()
    for finding in found:
        print(f"{TAGS[finding.severity]:<8} {finding.summary}")
        for line in finding.evidence:
            print(f"{INDENT}{line}")
        if finding.remedy:
            print(f"{INDENT}fix: {finding.remedy}")
    for part, why in [] if facts.remote else not_checked:  # remote: its finding says it
        print(f"{'NOTE':<8} not checked: {part}: {why}")
    blocking = sum(1 for finding in found if finding.severity == "blocks")
    if code:
        print(f"\n{blocking} finding{' blocks' if blocking == 1 else 's block'} connections")
    else:
        print("\nnothing blocks connections" + (" (see the warnings)" if found else ""))


def _queue(sock: PortSocket) -> str:
    kernel = sock.kernel
    if kernel.protocol != "tcp" or kernel.send_q is None:
        return ""
    return f", {kernel.recv_q} waiting (backlog {kernel.send_q})"


def print_json(facts: Facts, found: list[Finding], not_checked: list[tuple[str, str]],
               code: int) -> None:  # fmt: skip
    """The same findings as data."""
    print(json.dumps(report_data(facts, found, not_checked, code)))


def report_data(facts: Facts, found: list[Finding], not_checked: list[tuple[str, str]],
                code: int) -> dict[str, Any]:  # fmt: skip
    """The JSON document ``portd doctor --json`` prints."""
    target = facts.target
    settings = facts.settings
    before, after = facts.counters
    other = "udp" if target.protocol == "tcp" else "tcp"
    return {
        "target": {"host": target.host, "port": target.port, "protocol": target.protocol},
        "listeners": [_socket(sock) for sock in facts.listeners],
        "bound_not_listening": [_socket(sock) for sock in facts.bound],
        "addresses": [
            {"address": a.address, "port": target.port, "family": f"ipv{a.family}",
             "interface": a.interface, "loopback": a.loopback, "local": a.local,
             "outcome": facts.attempts[a].outcome if a in facts.attempts else None,
             "elapsed_ms": round(facts.attempts[a].elapsed_s * 1000, 3)
             if a in facts.attempts else None}
            for a in facts.addresses
        ],
        "localhost": list(facts.localhost),
        "kernel": {
            "unprivileged_port_start": settings.unprivileged_start,
            "ephemeral_range": list(settings.ephemeral) if settings.ephemeral else None,
            "reserved_ports": [list(span) for span in settings.reserved],
            "somaxconn": settings.somaxconn,
            "tcp_abort_on_overflow": settings.abort_on_overflow,
            "counters": after,
            "counters_during_check": {k: v - before.get(k, 0) for k, v in after.items()},
        },
        "firewall": {
            "tool": facts.ruleset.tool if facts.ruleset else None,
            "checked": bool(facts.ruleset and facts.ruleset.judge),
            "problem": facts.ruleset.problem if facts.ruleset else "no firewall tool found",
        },
        "service": {
            target.protocol: service_name(target.port, target.protocol),
            other: service_name(target.port, other),  # type: ignore[arg-type]
        },
        "findings": [finding._asdict() | {"evidence": list(finding.evidence)} for finding in found],
        "not_checked": [{"part": part, "reason": why} for part, why in not_checked],
        "exit_code": code,
    }  # fmt: skip


def _socket(sock: PortSocket) -> dict[str, Any]:
    kernel = sock.kernel
    return {
        "address": kernel.address, "port": kernel.port, "where": sock.where,
        "family": "ipv6" if ":" in kernel.address else "ipv4", "v6only": kernel.v6only,
        "state": kernel.state,
        "waiting": kernel.recv_q if kernel.protocol == "tcp" else None,
        "backlog": kernel.send_q if kernel.protocol == "tcp" else None,
        "user": sock.user, "uid": kernel.uid,
        "processes": [owner._asdict() for owner in sock.owners],
    }  # fmt: skip
