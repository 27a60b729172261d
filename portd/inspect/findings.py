"""doctor's judgement: facts (doctor.py) in, findings out, each a short sentence a person
can act on, with its evidence and a remedy.

A finding ``blocks`` when it keeps every asked address from being reached: every
address other hosts could use (when some were asked), else every loopback address asked.
Otherwise it is a ``warning`` (some clients fail) or a ``note`` (worth knowing). Sans-IO.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from portd.endpoints.base import ProtocolName
from portd.inspect.findings_firewall import firewall_findings
from portd.inspect.kernel import ephemeral_text
from portd.inspect.reachability import Address
from portd.inspect.services import service_name

if TYPE_CHECKING:
    from portd.inspect.doctor import Facts, PortSocket

SEVERITIES = ("blocks", "warning", "note")
SOMAXCONN_DEFAULT = 4096
UDP_OUTCOMES = {
    "ok": "replied",
    "timeout": "no refusal (bound, or dropped: UDP cannot tell)",
    "refused": "refused (port unreachable)",
}


class Finding(NamedTuple):
    """One thing doctor found."""

    severity: str  # blocks, warning, note
    code: str
    summary: str
    evidence: tuple[str, ...] = ()
    remedy: str | None = None


def judge(facts: Facts) -> list[Finding]:
    """Every finding, the ones that block first."""
    if facts.remote:
        found = _remote(facts)
    else:
        found = [*_nothing_listens(facts), *_coverage(facts), *_localhost(facts),
                 *firewall_findings(facts, severity), *_queues(facts), *_shared(facts)]  # fmt: skip
        found += _unexplained(facts, found)
        found += _ephemeral(facts) + _services(facts)
    return sorted(found, key=lambda finding: SEVERITIES.index(finding.severity))


def severity(facts: Facts, affected: Sequence[Address], from_others: bool = True) -> str:
    """``blocks`` when ``affected`` holds every address the asked clients could use."""
    asked = [a for a in facts.addresses if a.local]
    remote = [a for a in asked if not a.loopback]
    wanted = remote if remote and from_others else asked
    return "blocks" if wanted and set(wanted) <= set(affected) else "warning"


def covering(facts: Facts, address: Address) -> list[PortSocket]:
    """The listeners a connection to ``address`` would reach."""
    return [listener for listener in facts.listeners if listener.covers(address)]


def retry_command(facts: Facts, sudo: bool = False) -> str:
    """``portd doctor 127.0.0.1:8080 -u`` for the asked target."""
    target = facts.target
    where = str(target.port) if target.host == "*" else f"{target.host}:{target.port}"
    where = f"[{target.host}]:{target.port}" if ":" in target.host else where
    flag = " -u" if target.protocol == "udp" else ""
    return f"{'sudo ' if sudo else ''}portd doctor {where}{flag}"


def _nothing_listens(facts: Facts) -> list[Finding]:
    if facts.listeners:
        return []
    target = facts.target
    verb = "listens on" if target.protocol == "tcp" else "is bound to"
    evidence: list[str] = []
    remedy = "start the service and check the port in its config (systemctl status, journalctl -u)"
    for sock in facts.bound:
        evidence.append(f"{sock.where} is bound by {sock.owner_text(user=False)} but not "
                        "listening: connections are refused")  # fmt: skip
        remedy = "the process that holds the port must call listen() on it"
    for sock in facts.other_protocol:
        flag = "with -u" if target.protocol == "tcp" else "without -u"
        evidence.append(f"{sock.kernel.protocol} {sock.where} is held by {sock.owner_text()} "
                        f"(ask {flag} for that one)")  # fmt: skip
    busy = [sock for sock in facts.connections if sock.kernel.state != "TIME-WAIT"]
    for sock in busy[:3]:
        peer = f"{sock.kernel.peer_address}:{sock.kernel.peer_port}"
        evidence.append(f"a connection uses it as its local port: {sock.where} -> {peer} "
                        f"({sock.kernel.state}, {sock.owner_text()})")  # fmt: skip
    settings = facts.settings
    if settings.is_privileged(target.port):
        evidence.append(f"port {target.port} is below net.ipv4.ip_unprivileged_port_start "
                        f"({settings.unprivileged_start}): binding it needs root or "
                        "CAP_NET_BIND_SERVICE")  # fmt: skip
        if not facts.bound:
            remedy = ("start the service; if it cannot bind the port, give it "
                      "CAP_NET_BIND_SERVICE (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE) "
                      f"or use a port >= {settings.unprivileged_start}")  # fmt: skip
    evidence.append("sockets in other network namespaces (containers) are not seen from here")
    summary = f"nothing {verb} {target.protocol} port {target.port}"
    return [Finding("blocks", "nothing_listens", summary, tuple(evidence), remedy)]


def _coverage(facts: Facts) -> list[Finding]:
    if not facts.listeners:
        return []
    asked = [a for a in facts.addresses if a.local]
    uncovered = [a for a in asked if not covering(facts, a)]
    if _localhost(facts):  # those loopback addresses are its finding's
        uncovered = [a for a in uncovered if not (a.loopback and a.address in facts.localhost)]
    if not uncovered:
        return []
    port = facts.target.port
    bound = list(dict.fromkeys(s.where.rsplit(":", 1)[0] for s in facts.listeners))
    families = {s.kernel.family for s in facts.listeners}
    dual = any(s.kernel.v6only is False for s in facts.listeners)
    if all(_loopback(s) for s in facts.listeners) and any(not a.loopback for a in uncovered):
        summary = f"bound to {_and(bound)} only: other hosts cannot reach it"
    elif all(a.family == 6 for a in uncovered) and 6 not in {_family(s) for s in facts.listeners}:
        summary = f"bound to IPv4 only ({_and(bound)}): IPv6 clients are refused"
    elif all(a.family == 4 for a in uncovered) and len(families) == 1 and not dual:
        summary = f"bound to IPv6 only ({_and(bound)}): IPv4 clients are refused"
    else:
        summary = f"bound to {_and(bound)} only: {_and([a.show(port) for a in uncovered])} refuse"
    evidence = tuple(_attempt_line(facts, a) for a in uncovered)
    v4, v6 = (any(a.family == family for a in uncovered) for family in (4, 6))
    if v4 and v6:
        remedy = (
            f"bind 0.0.0.0:{port} and [::]:{port} (portd: *:{port}), or the address clients use"
        )
    else:
        wildcard = (
            f"0.0.0.0:{port} (every IPv4 address)" if v4 else f"[::]:{port} (every IPv6 address)"
        )
        remedy = f"also bind {wildcard}, or the address clients use"
    return [Finding(severity(facts, uncovered), "not_bound_there", summary, evidence, remedy)]


def _loopback(sock: PortSocket) -> bool:
    return Address(sock.kernel.address, _family(sock), None, True).loopback


def _family(sock: PortSocket) -> int:
    return 6 if ":" in sock.kernel.address else 4


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def outcome_text(facts: Facts, address: Address) -> str:
    """What the connect test to ``address`` found, in words (UDP's own for datagrams)."""
    attempt = facts.attempts.get(address)
    if attempt is None:
        return "not tried"
    if facts.target.protocol == "udp":
        return UDP_OUTCOMES.get(attempt.outcome) or attempt.describe()
    return attempt.describe(timed=True)


def _attempt_line(facts: Facts, address: Address) -> str:
    where = f" ({address.interface})" if address.interface else ""
    return f"{address.show(facts.target.port)}{where}: {outcome_text(facts, address)}"


def _localhost(facts: Facts) -> list[Finding]:
    order = facts.localhost
    loopbacks = [Address(a, 6 if ":" in a else 4, "lo", True) for a in order]
    if not facts.listeners or len(order) < 2 or facts.target.host not in ("*", "localhost"):
        return []
    covered = [a for a in loopbacks if covering(facts, a)]
    if not covered or len(covered) == len(loopbacks):
        return []
    port = facts.target.port
    missing = [a.show(port) for a in loopbacks if a not in covered]
    if loopbacks[0] not in covered:
        summary = f"localhost resolves to {order[0]} first, and nothing listens on {missing[0]}"
        why = "clients that do not go on to the next address are refused"
    else:
        summary = f"localhost also resolves to {_and(missing)}, where nothing listens"
        why = "clients that use only that family are refused"
    evidence = (f"localhost resolves to {_and(list(order))}, in that order", why)
    remedy = (f"listen on {_and(missing)} too (portd: localhost:{port} binds both), or have "
              f"clients use {covered[0].show(port)}")  # fmt: skip
    return [Finding("warning", "localhost_family", summary, evidence, remedy)]


def _queues(facts: Facts) -> list[Finding]:
    found = []
    before, after = facts.counters
    rose = after.get("ListenOverflows", 0) - before.get("ListenOverflows", 0)
    full = [s for s in facts.listeners if s.kernel.send_q is not None
            and s.kernel.protocol == "tcp" and s.kernel.recv_q > s.kernel.send_q]  # fmt: skip
    abort = facts.settings.abort_on_overflow
    for sock in full:
        evidence = [
            f"{sock.owner_text(user=False)} is not accepting them "
            "(stuck, overloaded, or never calls accept())",
            f"new connections are {'reset' if abort else 'dropped: clients time out'} "
            f"(net.ipv4.tcp_abort_on_overflow = {int(bool(abort))})",
        ]
        if rose > 0:
            evidence.append(
                f"the kernel's ListenOverflows counter rose by {rose} during this check"
            )
        summary = (f"the accept queue of {sock.where} is full: {sock.kernel.recv_q} connections "
                   f"wait, backlog {sock.kernel.send_q}")  # fmt: skip
        remedy = ("make the service accept faster (more workers), or restart it if it hangs; "
                  "a larger backlog only absorbs bursts")  # fmt: skip
        affected = [a for a in facts.addresses if covering(facts, a)
                    and all(s in full for s in covering(facts, a))]  # fmt: skip
        found.append(Finding(severity(facts, affected), "accept_queue_full", summary,
                             tuple(evidence), remedy))  # fmt: skip
    somaxconn = facts.settings.somaxconn
    capped = [s for s in facts.listeners if somaxconn and s.kernel.protocol == "tcp"
              and s.kernel.send_q == somaxconn < SOMAXCONN_DEFAULT]  # fmt: skip
    for sock in capped:
        found.append(Finding(
            "warning", "backlog_capped",
            f"the backlog of {sock.where} is cut to net.core.somaxconn ({somaxconn})",
            ("a burst of more connections than that, before the service accepts them, "
             "is dropped",),
            f"sysctl -w net.core.somaxconn={SOMAXCONN_DEFAULT} (the default since Linux 5.4)",
        ))  # fmt: skip
    if rose > 0 and not full:
        found.append(Finding("warning", "listen_overflows",
                             f"the kernel dropped {rose} connection(s) at a full accept queue "
                             "during this check", ("ListenOverflows counts every port of this "
                             "network namespace",), None))  # fmt: skip
    return found


def _shared(facts: Facts) -> list[Finding]:
    groups: dict[str, list[PortSocket]] = {}
    for sock in facts.listeners:
        groups.setdefault(sock.where, []).append(sock)
    found = []
    for where, members in groups.items():
        if len(members) < 2:
            continue
        spread = "connections" if facts.target.protocol == "tcp" else "datagrams"
        evidence = [f"{sock.owner_text()}, {sock.kernel.recv_q} waiting" for sock in members]
        programs = {owner.program for sock in members for owner in sock.owners}
        if len(programs) > 1 or len({sock.user for sock in members}) > 1:
            evidence.append("they are different programs: each gets a share, even one that "
                            "does not serve them")  # fmt: skip
        found.append(Finding(
            "warning", "shared_port",
            f"{len(members)} sockets share {where} (SO_REUSEPORT): the kernel spreads new "
            f"{spread} between them", tuple(evidence),
            "if one of them should not serve, stop it (its unit or pid above)",
        ))  # fmt: skip
    return found


def _unexplained(facts: Facts, found: list[Finding]) -> list[Finding]:
    if any(f.code in ("accept_queue_full", "firewall_blocks") for f in found):
        return []
    failing = [a for a in facts.addresses if a.local and covering(facts, a)
               and (attempt := facts.attempts.get(a)) is not None
               and attempt.outcome in ("refused", "timeout", "blocked")
               and (facts.target.protocol == "tcp" or attempt.outcome == "refused")]  # fmt: skip
    if not failing:
        return []
    evidence = [_attempt_line(facts, a) for a in failing]
    problem = facts.ruleset.problem if facts.ruleset is not None else "no firewall tool found"
    remedy = None
    if problem:
        evidence.append("the firewall was not checked: a rule there is the likely cause")
        remedy = f"check the firewall: {retry_command(facts, sudo=True)}"
    summary = "connections fail although the port listens there"
    return [Finding(severity(facts, failing, from_others=False), "connect_fails", summary,
                    tuple(evidence), remedy)]  # fmt: skip


def _ephemeral(facts: Facts) -> list[Finding]:
    port = facts.target.port
    if not facts.settings.is_ephemeral(port):
        return []
    text = ephemeral_text(port, facts.settings)
    summary, _, remedy = text.partition("; reserve it: ")
    return [Finding("warning", "ephemeral_port", summary, (), remedy)]


def _services(facts: Facts) -> list[Finding]:
    target = facts.target
    other: ProtocolName = "udp" if target.protocol == "tcp" else "tcp"
    name, other_name = service_name(target.port, target.protocol), service_name(target.port, other)
    if name is None and other_name is None:
        return []
    if name is None:
        summary = (f"{target.port}/{target.protocol} has no /etc/services entry; "
                   f"{target.port}/{other} is {other_name}")  # fmt: skip
    else:
        summary = f"{target.port}/{target.protocol} is registered as {name} in /etc/services"
        if other_name not in (None, name):
            summary += f" ({target.port}/{other}: {other_name})"
    evidence = ("ss -r, nmap and firewall tools show the port under that name",) if name else ()
    return [Finding("note", "service_name", summary, evidence, None)]


def _remote(facts: Facts) -> list[Finding]:
    failing = [a for a in facts.addresses if not facts.attempts[a].ok]
    summary = f"{facts.target.host} is not an address of this host: only the connect test ran"
    flag = " -u" if facts.target.protocol == "udp" else ""
    remedy = f"run portd doctor {facts.target.port}{flag} on that host for the rest"
    found = [Finding("note", "not_this_host", summary, (), remedy)]
    if failing and facts.target.protocol == "tcp":
        blocks = len(failing) == len(facts.addresses)
        found.append(Finding("blocks" if blocks else "warning", "connect_fails",
                             "connections from this host fail",
                             tuple(_attempt_line(facts, a) for a in failing), None))  # fmt: skip
    return found


def not_checked(facts: Facts, is_root: bool) -> list[tuple[str, str]]:
    """The parts of the diagnosis that did not run fully, and why."""
    parts = []
    if facts.remote:
        return [("listeners, firewall, kernel", f"{facts.target.host} is not this host")]
    if facts.ruleset is None:
        parts.append(("firewall", "neither nft nor iptables-save is installed"))
    elif facts.ruleset.problem:
        parts.append(("firewall", facts.ruleset.problem))
    hidden = [s for s in (*facts.listeners, *facts.bound) if not s.owners]
    if hidden:
        which = "1 socket" if len(hidden) == 1 else f"{len(hidden)} sockets"
        why = ("it runs in another PID namespace" if is_root
               else "run as root to see other users' processes")  # fmt: skip
        parts.append(("processes", f"the process behind {which} is not visible: {why}"))
    return parts
