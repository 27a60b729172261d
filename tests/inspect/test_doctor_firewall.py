"""`portd doctor` and firewall rules, inside a network namespace of the test's own (the
rules never reach the host): an nftables drop rule, a reject rule, a rule that lets
this host's own connects through while other hosts are dropped, the iptables-save
fallback when nft is missing, and what doctor says without root."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.netns import ADDRESS_V4, ADDRESS_V6, Netns, netns
from tests.support import PORTD, require_tool

__all__ = ["netns"]
PORT = 8080
RULES = """
table inet portd_test {
    chain input {
        type filter hook input priority 0; policy accept;
        %s
    }
}
"""


@pytest.fixture
def served(netns: Netns) -> Netns:
    """A dual-stack listener on every address, so only the firewall stands in the way."""
    require_tool("nft")
    netns.hold({"op": "bind", "host": "::", "port": PORT, "v6only": False})
    return netns


def doctor(netns: Netns, *args: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    done = netns.run(*PORTD, "doctor", "--json", "-w", "0.5", *args, check=False, **kwargs)
    assert done.stderr == ""
    report: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, report


def finding(report: dict[str, Any], code: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [f for f in report["findings"] if f["code"] == code]
    assert len(found) == 1, report["findings"]
    return found[0]


def handle(netns: Netns, text: str) -> int:
    """The handle nft gave the rule whose text is ``text``."""
    listing = netns.run("nft", "-a", "list", "ruleset").stdout
    (number,) = re.findall(rf"^\s*{re.escape(text)} # handle (\d+)$", listing, flags=re.M)
    return int(number)


def outcomes(report: dict[str, Any]) -> dict[str, str]:
    return {entry["address"]: entry["outcome"] for entry in report["addresses"]}


def test_a_drop_rule_blocks_every_client_and_is_named(served: Netns) -> None:
    served.nft(RULES % "tcp dport 8080 drop")
    number = handle(served, "tcp dport 8080 drop")
    code, report = doctor(served, str(PORT))
    assert code == 1
    assert set(outcomes(report).values()) == {"timeout"}
    assert finding(report, "firewall_blocks") == {
        "severity": "blocks", "code": "firewall_blocks",
        "summary": "the firewall drops tcp port 8080 from every client",
        "evidence": [
            f"table inet portd_test chain input handle {number}: tcp dport 8080 drop",
            "affects every address, from other hosts and this host",
            "clients wait, then time out",
        ],
        "remedy": f"nft delete rule inet portd_test input handle {number}, or accept it first: "
                  f"nft insert rule inet portd_test input position {number} tcp dport 8080 accept",
    }  # fmt: skip
    assert "connect_fails" not in {f["code"] for f in report["findings"]}  # it is explained


def test_a_reject_rule_is_told_from_a_drop(served: Netns) -> None:
    served.nft(RULES % "tcp dport 8080 reject with tcp reset")
    code, report = doctor(served, str(PORT))
    assert code == 1
    assert set(outcomes(report).values()) == {"refused"}
    rejected = finding(report, "firewall_blocks")
    assert rejected["summary"] == "the firewall rejects tcp port 8080 from every client"
    assert rejected["evidence"][2] == "clients get connection refused at once"


def test_a_rule_for_one_address_is_a_warning_naming_it(served: Netns) -> None:
    """Dropped at 192.0.2.10 only: the IPv6 address still serves other hosts."""
    served.nft(RULES % f"ip daddr {ADDRESS_V4} tcp dport 8080 drop")
    code, report = doctor(served, str(PORT))
    assert code == 0
    assert outcomes(report) == {"127.0.0.1": "ok", "::1": "ok", ADDRESS_V4: "timeout",
                                ADDRESS_V6: "ok"}  # fmt: skip
    dropped = finding(report, "firewall_blocks")
    assert (dropped["severity"], dropped["evidence"][1]) == (
        "warning", f"affects {ADDRESS_V4}:8080 from other hosts; {ADDRESS_V4}:8080 from this host"
    )  # fmt: skip


def test_a_listing_that_hides_a_match_is_corrected_by_the_connect_tests(served: Netns) -> None:
    """nft lists ``meta nfproto ipv4 tcp dport 8080 reject with tcp reset`` in an inet
    table without its nfproto match; the IPv6 connect tests pass, so doctor does not
    claim IPv6 is rejected."""
    served.nft(RULES % "meta nfproto ipv4 tcp dport 8080 reject with tcp reset")
    code, report = doctor(served, str(PORT))
    assert outcomes(report) == {"127.0.0.1": "refused", "::1": "ok", ADDRESS_V4: "refused",
                                ADDRESS_V6: "ok"}  # fmt: skip
    assert code == 0  # IPv6 clients get through
    rejected = finding(report, "firewall_blocks")
    assert rejected["severity"] == "warning"
    assert rejected["evidence"][1] == (
        f"affects {ADDRESS_V4}:8080 from other hosts; 127.0.0.1:8080, {ADDRESS_V4}:8080 from "
        "this host"
    )
    assert rejected["evidence"][-1] == (
        f"yet connect tests to [::1]:8080, [{ADDRESS_V6}]:8080 passed: there the rule does not "
        "apply as listed (nft can list a rule without all its matches)"
    )


def test_loopback_accepted_while_other_hosts_are_dropped(served: Netns) -> None:
    """``iif lo accept`` first: every connect test from here passes, yet other hosts are
    dropped; doctor says both."""
    served.nft(RULES % "iif lo accept\n        tcp dport 8080 drop")
    code, report = doctor(served, str(PORT))
    assert code == 1
    assert set(outcomes(report).values()) == {"ok"}
    blocked = finding(report, "firewall_blocks")
    assert blocked["summary"] == "the firewall drops tcp port 8080 from other hosts"
    assert blocked["evidence"][1:] == [
        "affects every address from other hosts",
        "clients wait, then time out",
        "connect tests from this host pass (another rule accepts lo): they do not show what "
        "other hosts meet",
    ]


def test_a_source_condition_is_an_exception_not_a_guess(served: Netns) -> None:
    served.nft(RULES % "ip saddr 10.0.0.0/8 tcp dport 8080 accept\n        tcp dport 8080 drop")
    _code, report = doctor(served, f"{ADDRESS_V4}:{PORT}")
    blocked = finding(report, "firewall_blocks")
    assert blocked["severity"] == "warning"  # 10.0.0.0/8 gets through
    accept = handle(served, "ip saddr 10.0.0.0/8 tcp dport 8080 accept")
    assert (
        f"accepted before it only when: table inet portd_test chain input handle {accept}: "
        "ip saddr 10.0.0.0/8 tcp dport 8080 accept"
    ) in blocked["evidence"]


def test_without_root_the_firewall_is_not_checked_and_that_is_said(served: Netns) -> None:
    served.nft(RULES % "tcp dport 8080 drop")
    setpriv = require_tool("setpriv")
    done = served.run(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                      "--inh-caps=-all", *PORTD, "doctor", "-w", "0.5", str(PORT),
                      check=False)  # fmt: skip
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert "BLOCKS   connections fail although the port listens there" in lines
    assert "         the firewall was not checked: a rule there is the likely cause" in lines
    assert "         fix: check the firewall: sudo portd doctor 8080" in lines
    assert (
        "NOTE     not checked: firewall: listing its rules needs root (CAP_NET_ADMIN; nft was "
        "refused)"
    ) in lines
    assert (
        "NOTE     not checked: processes: the process behind 1 socket is not visible: run as "
        "root to see other users' processes"
    ) in lines


def test_iptables_save_when_nft_is_missing(netns: Netns, tmp_path: Path) -> None:
    """A PATH holding iptables-save and ip6tables-save, and no nft."""
    iptables = require_tool("iptables")
    netns.hold({"op": "bind", "host": "0.0.0.0", "port": PORT})
    netns.run(iptables, "-A", "INPUT", "-p", "tcp", "--dport", str(PORT), "-j", "DROP")
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("iptables-save", "ip6tables-save"):
        (tools / name).symlink_to(require_tool(name))
    code, report = doctor(netns, f"{ADDRESS_V4}:{PORT}", env={"PATH": str(tools)})
    assert code == 1
    assert report["firewall"] == {"tool": "iptables", "checked": True, "problem": None}
    blocked = finding(report, "firewall_blocks")
    assert blocked["evidence"][0] == (
        "table filter chain INPUT handle 1: -A INPUT -p tcp -m tcp --dport 8080 -j DROP"
    )
    assert blocked["remedy"] == (
        "iptables -D INPUT 1, or accept it first: iptables -I INPUT 1 -p tcp --dport 8080 -j ACCEPT"
    )


def test_no_firewall_tool_is_said(netns: Netns, tmp_path: Path) -> None:
    netns.hold({"op": "bind", "host": "0.0.0.0", "port": PORT})
    empty = tmp_path / "empty"
    empty.mkdir()
    code, report = doctor(netns, f"{ADDRESS_V4}:{PORT}", env={"PATH": str(empty)})
    assert code == 0
    assert report["not_checked"] == [
        {"part": "firewall", "reason": "neither nft nor iptables-save is installed"}
    ]
