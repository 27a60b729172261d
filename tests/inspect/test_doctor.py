"""`portd doctor` in a network namespace of the test's own, one cause of "I can't reach
my port" at a time: nothing listening, a listener on 127.0.0.1 only, on ::1 only, on
both, localhost's resolution order, a full accept queue, a SO_REUSEPORT pair, a port in
a narrowed ephemeral range, UDP, and the JSON shape. Firewall causes are in
test_doctor_firewall.py.

Each test checks the exit code, the finding's code and wording, and the evidence that
backs it: the report is what a person reads to act, so its words are the behaviour.
"""

from __future__ import annotations

import errno
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.netns import ADDRESS_V4, ADDRESS_V6, Netns, netns
from tests.support import run_portd

__all__ = ["netns"]
PORT = 8080
PROGRAM = Path(sys.executable).name[:15]  # the holder's name as the kernel keeps it


def listen(host: str, port: int = PORT, **options: Any) -> dict[str, Any]:
    return {"op": "bind", "host": host, "port": port, **options}


def doctor(netns: Netns, *args: str) -> tuple[int, dict[str, Any]]:
    """``portd doctor --json ARGS`` inside the namespace: (exit code, report)."""
    done = netns.portd("doctor", "--json", "-w", "0.5", *args)
    assert done.stderr == ""
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["exit_code"] == done.returncode
    return done.returncode, report


def codes(report: dict[str, Any]) -> dict[str, str]:
    """finding code -> severity."""
    return {finding["code"]: finding["severity"] for finding in report["findings"]}


def finding(report: dict[str, Any], code: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [f for f in report["findings"] if f["code"] == code]
    assert len(found) == 1, report["findings"]
    return found[0]


def outcomes(report: dict[str, Any]) -> dict[str, str]:
    return {entry["address"]: entry["outcome"] for entry in report["addresses"]}


def test_nothing_listening_blocks(netns: Netns) -> None:
    code, report = doctor(netns, str(PORT))
    assert code == 1
    assert codes(report) == {"nothing_listens": "blocks", "service_name": "note"}
    assert finding(report, "nothing_listens")["summary"] == "nothing listens on tcp port 8080"
    assert set(outcomes(report).values()) == {"refused"}
    assert {"127.0.0.1", "::1", ADDRESS_V4, ADDRESS_V6} == set(outcomes(report))


def test_the_text_report_a_person_reads(netns: Netns) -> None:
    holder = netns.hold(listen("127.0.0.1"))
    done = netns.portd("doctor", "-w", "0.5", str(PORT))
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0] == "portd doctor: tcp port 8080 on every local address"
    assert lines[2:4] == [
        "listening:",
        f"  127.0.0.1:8080  pid {holder.proc.pid} ({PROGRAM}), user root, 0 waiting (backlog 128)",
    ]
    assert "BLOCKS   bound to 127.0.0.1 only: other hosts cannot reach it" in lines
    assert (
        "         fix: bind 0.0.0.0:8080 and [::]:8080 (portd: *:8080), or the address clients use"
    ) in lines
    assert lines[-1] == "1 finding blocks connections"


def test_bound_to_ipv4_loopback_only(netns: Netns) -> None:
    holder = netns.hold(listen("127.0.0.1"))
    code, report = doctor(netns, str(PORT))
    assert code == 1
    blocked = finding(report, "not_bound_there")
    assert (blocked["severity"], blocked["summary"]) == (
        "blocks", "bound to 127.0.0.1 only: other hosts cannot reach it"
    )  # fmt: skip
    assert outcomes(report) == {"127.0.0.1": "ok", "::1": "refused", ADDRESS_V4: "refused",
                                ADDRESS_V6: "refused"}  # fmt: skip
    assert [p["pid"] for p in report["listeners"][0]["processes"]] == [holder.proc.pid]
    assert doctor(netns, f"127.0.0.1:{PORT}")[0] == 0  # for itself, nothing is wrong


def test_bound_to_ipv6_loopback_only(netns: Netns) -> None:
    netns.hold(listen("::1"))
    code, report = doctor(netns, str(PORT))
    assert code == 1
    assert finding(report, "not_bound_there")["summary"] == (
        "bound to [::1] only: other hosts cannot reach it"
    )
    code, report = doctor(netns, f"localhost:{PORT}")
    assert code == 0
    assert report["localhost"] == ["::1", "127.0.0.1"]  # tests/netns.py's /etc/hosts
    assert finding(report, "localhost_family") == {
        "severity": "warning", "code": "localhost_family",
        "summary": "localhost also resolves to 127.0.0.1:8080, where nothing listens",
        "evidence": ["localhost resolves to ::1 and 127.0.0.1, in that order",
                     "clients that use only that family are refused"],
        "remedy": "listen on 127.0.0.1:8080 too (portd: localhost:8080 binds both), or have "
                  "clients use [::1]:8080",
    }  # fmt: skip


def test_localhost_resolving_first_to_the_family_nobody_listens_on(netns: Netns) -> None:
    netns.hold(listen("127.0.0.1"))
    code, report = doctor(netns, f"localhost:{PORT}")
    assert code == 0  # clients that go on to 127.0.0.1 get through
    assert outcomes(report) == {"::1": "refused", "127.0.0.1": "ok"}
    assert finding(report, "localhost_family")["summary"] == (
        "localhost resolves to ::1 first, and nothing listens on [::1]:8080"
    )
    assert "not_bound_there" not in codes(report)  # the localhost finding says it all


def test_both_loopbacks_serve_localhost_but_not_other_hosts(netns: Netns) -> None:
    netns.hold(listen("127.0.0.1"), listen("::1"))
    code, report = doctor(netns, f"localhost:{PORT}")
    assert (code, codes(report)) == (0, {"service_name": "note"})
    code, report = doctor(netns, str(PORT))
    assert code == 1
    assert finding(report, "not_bound_there")["summary"] == (
        "bound to 127.0.0.1 and [::1] only: other hosts cannot reach it"
    )


def test_every_address_reachable_exits_0(netns: Netns) -> None:
    netns.hold(listen("::", v6only=False))
    code, report = doctor(netns, str(PORT))
    assert code == 0
    assert set(outcomes(report).values()) == {"ok"}
    assert report["listeners"][0]["where"] == "*:8080"
    assert report["listeners"][0]["v6only"] is False


def test_a_full_accept_queue_blocks(netns: Netns) -> None:
    """A listener with backlog 1 that never accepts, and two clients already queued."""
    holder = netns.hold(listen("127.0.0.1", backlog=1),
                        {"op": "connect", "host": "127.0.0.1", "port": PORT},
                        {"op": "connect", "host": "127.0.0.1", "port": PORT})  # fmt: skip
    code, report = doctor(netns, f"127.0.0.1:{PORT}")
    assert code == 1
    full = finding(report, "accept_queue_full")
    assert full["summary"] == (
        "the accept queue of 127.0.0.1:8080 is full: 2 connections wait, backlog 1"
    )
    assert full["evidence"][:2] == [
        f"pid {holder.proc.pid} ({PROGRAM}) is not accepting them "
        "(stuck, overloaded, or never calls accept())",
        "new connections are dropped: clients time out (net.ipv4.tcp_abort_on_overflow = 0)",
    ]
    assert outcomes(report) == {"127.0.0.1": "timeout"}
    assert (report["listeners"][0]["waiting"], report["listeners"][0]["backlog"]) == (2, 1)
    assert report["kernel"]["counters_during_check"]["ListenOverflows"] >= 1


def test_a_backlog_cut_to_a_small_somaxconn(netns: Netns) -> None:
    netns.sysctl("net.core.somaxconn", "64")
    netns.hold(listen("127.0.0.1", backlog=512))
    _code, report = doctor(netns, f"127.0.0.1:{PORT}")
    assert report["listeners"][0]["backlog"] == 64
    capped = finding(report, "backlog_capped")
    assert (capped["severity"], capped["summary"], capped["remedy"]) == (
        "warning", "the backlog of 127.0.0.1:8080 is cut to net.core.somaxconn (64)",
        "sysctl -w net.core.somaxconn=4096 (the default since Linux 5.4)",
    )  # fmt: skip


def test_two_reuseport_sockets_are_named_with_their_owners(netns: Netns) -> None:
    first = netns.hold(listen("0.0.0.0", reuseport=True))
    second = netns.hold(listen("0.0.0.0", reuseport=True))
    _code, report = doctor(netns, f"127.0.0.1:{PORT}")
    shared = finding(report, "shared_port")
    assert shared["summary"] == (
        "2 sockets share 0.0.0.0:8080 (SO_REUSEPORT): the kernel spreads new connections "
        "between them"
    )
    pids = sorted(p["pid"] for sock in report["listeners"] for p in sock["processes"])
    assert pids == sorted([first.proc.pid, second.proc.pid])
    assert all(f"pid {pid} (" in " ".join(shared["evidence"]) for pid in pids)


def test_a_port_in_the_ephemeral_range_until_reserved(netns: Netns) -> None:
    netns.hold(listen("::", v6only=False))
    netns.sysctl("net.ipv4.ip_local_port_range", "8000 8100")
    netns.sysctl("net.ipv4.ip_local_reserved_ports", "8090-8095")
    code, report = doctor(netns, str(PORT))
    assert code == 0  # a warning: it listens now
    assert finding(report, "ephemeral_port") == {
        "severity": "warning", "code": "ephemeral_port",
        "summary": "port 8080 is in the ephemeral range 8000-8100 and not reserved: an "
                   "outgoing connection can take it before the listener binds",
        "evidence": [],
        "remedy": "sysctl -w net.ipv4.ip_local_reserved_ports=8080,8090-8095",
    }  # fmt: skip
    netns.sysctl("net.ipv4.ip_local_reserved_ports", "8080,8090-8095")
    assert "ephemeral_port" not in codes(doctor(netns, str(PORT))[1])


def test_the_other_protocol_and_a_privileged_port_are_named(netns: Netns) -> None:
    netns.hold(listen("127.0.0.1", 80, proto="udp"))
    code, report = doctor(netns, "80")
    assert code == 1
    nothing = finding(report, "nothing_listens")
    assert nothing["evidence"][0].startswith("udp 127.0.0.1:80 is held by pid ")
    assert nothing["evidence"][0].endswith("(ask with -u for that one)")
    assert nothing["evidence"][1] == (
        "port 80 is below net.ipv4.ip_unprivileged_port_start (1024): binding it needs root "
        "or CAP_NET_BIND_SERVICE"
    )
    assert nothing["remedy"] == (
        "start the service; if it cannot bind the port, give it CAP_NET_BIND_SERVICE "
        "(systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE) or use a port >= 1024"
    )


def test_udp_bound_to_loopback_only(netns: Netns) -> None:
    netns.hold(listen("127.0.0.1", 5353, proto="udp"))
    code, report = doctor(netns, "-u", "5353")
    assert code == 1
    assert finding(report, "not_bound_there")["summary"] == (
        "bound to 127.0.0.1 only: other hosts cannot reach it"
    )
    assert outcomes(report) == {"127.0.0.1": "timeout", "::1": "refused",
                                ADDRESS_V4: "refused", ADDRESS_V6: "refused"}  # fmt: skip
    assert report["target"] == {"host": "*", "port": 5353, "protocol": "udp"}


def test_bound_but_never_listening(netns: Netns) -> None:
    netns.hold(listen("127.0.0.1", listen=False))
    code, report = doctor(netns, f"127.0.0.1:{PORT}")
    assert code == 1
    if not report["bound_not_listening"]:
        pytest.skip("this kernel's sock_diag does not list bound-only sockets (Linux < 6.8)")
    evidence = finding(report, "nothing_listens")["evidence"][0]
    assert evidence.startswith("127.0.0.1:8080 is bound by pid ")
    assert evidence.endswith("but not listening: connections are refused")


def test_a_host_that_is_not_this_one(netns: Netns) -> None:
    netns.run("ip", "route", "add", "unreachable", "203.0.113.0/24")
    code, report = doctor(netns, "203.0.113.7:80")
    assert code == 1
    assert codes(report) == {"connect_fails": "blocks", "not_this_host": "note"}
    (evidence,) = finding(report, "connect_fails")["evidence"]
    assert re.fullmatch(r"203\.0\.113\.7:80: no route to host after [\d.]+ ms", evidence)
    assert report["not_checked"] == [
        {"part": "listeners, firewall, kernel", "reason": "203.0.113.7 is not this host"}
    ]
    assert finding(report, "not_this_host")["remedy"] == (
        "run portd doctor 80 on that host for the rest"
    )


def test_json_shape(netns: Netns) -> None:
    netns.hold(listen("127.0.0.1"))
    _code, report = doctor(netns, str(PORT))
    assert set(report) == {"target", "listeners", "bound_not_listening", "addresses",
                           "localhost", "kernel", "firewall", "service", "findings",
                           "not_checked", "exit_code"}  # fmt: skip
    (sock,) = report["listeners"]
    assert set(sock) == {"address", "port", "where", "family", "v6only", "state", "waiting",
                         "backlog", "user", "uid", "processes"}  # fmt: skip
    assert set(sock["processes"][0]) == {"pid", "fd", "program", "unit"}
    assert all(set(a) == {"address", "port", "family", "interface", "loopback", "local",
                          "outcome", "elapsed_ms"} for a in report["addresses"])  # fmt: skip
    assert set(report["kernel"]) == {"unprivileged_port_start", "ephemeral_range",
                                     "reserved_ports", "somaxconn", "tcp_abort_on_overflow",
                                     "counters", "counters_during_check"}  # fmt: skip
    assert report["firewall"] == {"tool": "nftables", "checked": True, "problem": None}
    assert report["service"] == {"tcp": "http-alt", "udp": None}
    assert all(set(f) == {"severity", "code", "summary", "evidence", "remedy"}
               for f in report["findings"])  # fmt: skip
    assert [f["severity"] for f in report["findings"]] == sorted(
        (f["severity"] for f in report["findings"]), key=("blocks", "warning", "note").index
    )


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (["0"], 64, "portd: doctor needs a port from 1 to 65535, got '0'"),
        (["70000"], 64, "portd: port 70000 is out of range; expected 0-65535"),
        (["no-such-service"], 64, "portd: bad port 'no-such-service'; expected 0-65535 or a "
                                  "service name from /etc/services"),
        (["no-such-host.invalid:80"], 1, "portd: cannot resolve 'no-such-host.invalid': "),
    ],
    ids=["zero", "range", "service", "host"],
)  # fmt: skip
def test_bad_targets_exit_with_one_line(args: list[str], code: int, line: str) -> None:
    done = run_portd("doctor", *args)
    assert done.returncode == code
    assert done.stdout == ""
    (error,) = done.stderr.splitlines()
    assert error.startswith(line)


def test_a_diagnosis_that_cannot_run_exits_69(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The kernel's socket tables unreadable (netlink refused, /proc/net missing)."""
    from portd import cli
    from portd.inspect import procnet, sockdiag

    def refused() -> None:
        raise OSError(errno.EPERM, "sock_diag refused")

    monkeypatch.setattr(sockdiag, "_netlink", refused)
    monkeypatch.setattr(procnet, "PROC_NET", Path("/nonexistent-proc-net"))
    assert cli.main(["doctor", "8080"]) == 69
    assert capsys.readouterr().err == (
        "portd: cannot read the kernel's socket tables: /nonexistent-proc-net/tcp is "
        "unreadable (netlink: sock_diag refused)\n"
    )


def test_help_names_the_exit_codes() -> None:
    done = run_portd("doctor", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "exit status: 0 nothing blocks connections, 1 a finding blocks them" in text
    assert "69 the diagnosis could not run" in text
