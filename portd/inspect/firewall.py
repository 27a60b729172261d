"""Which firewall rules decide a new connection to one port: read the ruleset (nftables
with ``nft -j``, else iptables-save), walk the input path the way the kernel does, and
name the rule (table, chain, handle) that drops, rejects or lets the packet through.

A packet is judged twice per address: as this host's own connect sends it (in on
``lo``) and as another host's would arrive (in on another interface), because rules
like ``iif lo accept`` make a local connect test pass where remote clients are dropped.
Matches portd cannot know (a source address, a rate limit) make a verdict uncertain:
reported as "only for some clients", never guessed. The walk is sans-IO: nftables.py
and iptables.py turn their tool's output into ``Chain`` lists; ``decide`` walks them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import NamedTuple

from portd.endpoints.base import ProtocolName

TOOL_TIMEOUT_S = 10.0
HOOK_ORDER = {"prerouting": 0, "input": 1}
TERMINAL = frozenset({"accept", "drop", "reject"})
MAX_DEPTH = 32


class Packet(NamedTuple):
    """The first packet of a new connection to one of this host's addresses."""

    family: int  # 4 or 6
    protocol: ProtocolName
    port: int
    address: str
    from_loopback: bool  # sent by this host (in on lo), or by another host


class RuleRef(NamedTuple):
    """Where a rule lives, and its text as the tool prints it."""

    table: str  # "inet filter" (nftables) or "filter" (iptables)
    chain: str
    handle: int | None  # nft's handle, iptables' rule number; None for a chain's policy
    text: str

    def __str__(self) -> str:
        where = f"table {self.table} chain {self.chain}"
        if self.handle is None:
            return f"{where}: policy {self.text}"
        return f"{where} handle {self.handle}: {self.text}"


class Rule(NamedTuple):
    """One rule as judged for one packet: does it match (None: cannot tell), and what then."""

    ref: RuleRef
    match: bool | None
    verdict: str | None  # accept drop reject jump goto return redirect unknown, None: continue
    target: str | None = None  # the chain of a jump or goto


class Chain(NamedTuple):
    """A chain of rules; base chains (hooked into the path) have a hook and a policy."""

    table: str
    name: str
    rules: tuple[Rule, ...]
    hook: str | None = None
    priority: int = 0
    policy: str | None = None


class Verdict(NamedTuple):
    """A rule (or a policy) that decides, or may decide, the packet's fate."""

    action: str
    rule: RuleRef
    certain: bool


class Decision(NamedTuple):
    """What the input path does to a packet: the verdict that certainly applies (None:
    it gets through), and the uncertain verdicts met on the way."""

    blocked: Verdict | None
    maybe_blocked: tuple[Verdict, ...]
    exceptions: tuple[Verdict, ...]  # uncertain accepts before ``blocked``
    redirects: tuple[Verdict, ...]
    unknown: Verdict | None  # a certain verdict portd cannot judge (queue to userspace)


class Ruleset(NamedTuple):
    """A firewall read from its tool: judge a packet into chains and say how to let it
    through, or say why the rules could not be read (``problem``)."""

    tool: str  # "nftables" or "iptables"
    judge: Callable[[Packet], Sequence[Chain]] | None
    remedy: Callable[[Verdict, Packet], str] | None
    problem: str | None = None


def run_tool(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """Run a firewall tool; (stdout, None) or (None, why it could not list the rules)."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT_S, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{argv[0]} failed: {exc}"
    if done.returncode == 0:
        return done.stdout, None
    error = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    denied = "not permitted" in error.lower() or "permission denied" in error.lower()
    if denied or os.geteuid() != 0:
        return None, f"listing its rules needs root (CAP_NET_ADMIN; {argv[0]} was refused)"
    return None, f"{' '.join(argv)} failed: {error}"


def read_ruleset() -> Ruleset | None:
    """nftables when ``nft`` is installed, else iptables-save/ip6tables-save; None when
    neither tool exists."""
    from portd.inspect import iptables, nftables

    if shutil.which("nft"):
        return nftables.read()
    if shutil.which("iptables-save") or shutil.which("ip6tables-save"):
        return iptables.read()
    return None


def decide(chains: Sequence[Chain]) -> Decision:
    """Walk the base chains in the kernel's order (hook, then priority); an accept ends
    one base chain, a drop or reject ends the packet."""
    by_name = {(chain.table, chain.name): chain for chain in chains}
    walk = _Walk(by_name)
    bases = sorted((c for c in chains if c.hook in HOOK_ORDER),
                   key=lambda c: (HOOK_ORDER[c.hook or ""], c.priority))  # fmt: skip
    for base in bases:
        walk.exceptions.clear()  # an accept ends its own base chain only: not a later drop
        found = walk.chain(base, certain=True, depth=0)
        if found is None or found.action == "return":
            policy = base.policy or "accept"
            found = Verdict(policy, RuleRef(base.table, base.name, None, policy), True)
        if found.action in ("drop", "reject"):
            return walk.decision(found)
        if found.action == "unknown":
            return walk.decision(None, unknown=found)
    return walk.decision(None)


class _Walk:
    def __init__(self, chains: dict[tuple[str, str], Chain]) -> None:
        self.chains = chains
        self.maybe: list[Verdict] = []
        self.exceptions: list[Verdict] = []
        self.redirects: list[Verdict] = []

    def chain(self, chain: Chain, certain: bool, depth: int) -> Verdict | None:
        """The certain verdict this chain reaches (None: falls through to its caller)."""
        for rule in chain.rules:
            if rule.match is False or rule.verdict is None:
                continue
            sure = certain and rule.match is True
            if rule.verdict in TERMINAL or rule.verdict in ("unknown", "return"):
                if sure:
                    return Verdict(rule.verdict, rule.ref, True)
                self._note(Verdict(rule.verdict, rule.ref, False))
            elif rule.verdict == "redirect":
                self.redirects.append(Verdict("redirect", rule.ref, sure))
            elif rule.verdict in ("jump", "goto"):
                found = self._descend(chain.table, rule, sure, depth)
                if found is not None and found.action != "return":
                    return found
                if rule.verdict == "goto" and sure:
                    return None  # the called chain's end is this chain's end too
        return None

    def _descend(self, table: str, rule: Rule, sure: bool, depth: int) -> Verdict | None:
        called = self.chains.get((table, rule.target or ""))
        if called is None or depth >= MAX_DEPTH:
            return None
        return self.chain(called, sure, depth + 1)

    def _note(self, verdict: Verdict) -> None:
        if verdict.action in ("drop", "reject"):
            self.maybe.append(verdict)
        elif verdict.action == "accept":
            self.exceptions.append(verdict)

    def decision(self, blocked: Verdict | None, unknown: Verdict | None = None) -> Decision:
        return Decision(blocked, tuple(self.maybe),
                        tuple(self.exceptions) if blocked else (), tuple(self.redirects),
                        unknown)  # fmt: skip
