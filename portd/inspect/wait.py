"""``portd wait HOST:PORT ...``: block until every address accepts a TCP connection."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Sequence

from portd.endpoints.inet import InetAddress, InetEndpoint, parse_inet
from portd.errors import UsageError
from portd.inspect.probe import Attempt, probe_tcp

PROBE_TIMEOUT_S = 1.0
EX_STILL_DOWN = 1


def parse_targets(texts: Sequence[str]) -> list[InetEndpoint]:
    """``HOST:PORT`` for each argument (a host is required: nothing to wait for on ``*``).

    Raises:
        UsageError: a bare port or ``*``.
    """
    specs = [parse_inet(text) for text in texts]
    for text, spec in zip(texts, specs, strict=True):
        if spec.is_wildcard:
            raise UsageError(f"wait needs HOST:PORT, got {text!r}")
    return specs


def run_wait(texts: Sequence[str], timeout_s: float, interval_s: float, verbose: bool) -> int:
    """Return 0 as soon as all are up, or 1 after printing one line per address still down.

    With ``verbose``, a line for each target when it comes up, and whenever what its
    addresses answer changes while it is down (every address tried, v4 and v6).
    """
    pending = parse_targets(texts)
    reasons: dict[InetEndpoint, str] = {}
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        before = dict(reasons)
        up = _probe_round(
            pending, reasons, min(PROBE_TIMEOUT_S, max(deadline - time.monotonic(), 0.05))
        )
        for spec in up:
            pending.remove(spec)
            if verbose:
                print(f"{spec} is up after {time.monotonic() - started:.1f} s", file=sys.stderr)
        if verbose:
            for spec in pending:
                if reasons.get(spec) != before.get(spec):
                    print(f"{spec} is down: {reasons[spec]}", file=sys.stderr, flush=True)
        if not pending:
            return 0
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            for spec in pending:
                print(
                    f"portd: {spec} is still down after {timeout_s:g} s: {reasons[spec]}",
                    file=sys.stderr,
                )
            return EX_STILL_DOWN
        time.sleep(min(interval_s, remaining))  # poll interval between rounds


def _probe_round(
    specs: Sequence[InetEndpoint], reasons: dict[InetEndpoint, str], timeout_s: float
) -> list[InetEndpoint]:
    targets: dict[InetAddress, InetEndpoint] = {}
    for spec in specs:
        try:
            infos = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            reasons[spec] = f"cannot resolve {spec.host!r}: {exc.strerror}"
            continue
        except UnicodeError:  # bytes that are not UTF-8 (surrogates), or a bad IDNA label
            reasons[spec] = f"cannot resolve {spec.host!r}: not a valid host name"
            continue
        for family, _type, _proto, _name, sockaddr in infos:
            targets[InetAddress(family, sockaddr)] = spec  # type: ignore[arg-type]
    attempts: dict[InetEndpoint, list[Attempt]] = {}
    for attempt in probe_tcp(targets, timeout_s):
        attempts.setdefault(targets[attempt.target], []).append(attempt)
    up = [spec for spec in specs if any(a.ok for a in attempts.get(spec, []))]
    for spec, tried in attempts.items():
        if spec not in up:
            reasons[spec] = describe_failures(spec, tried, list(targets))
    return up


def describe_failures(spec: InetEndpoint, tried: list[Attempt], order: list[InetAddress]) -> str:
    """``connection refused`` for one address; ``[::1]:80 connection refused,
    127.0.0.1:80 timed out`` when the name gave several (in resolver order)."""
    tried = sorted(tried, key=lambda attempt: order.index(attempt.target))
    if len(tried) == 1 and tried[0].target.host == spec.host:
        return tried[0].describe()
    return ", ".join(f"{attempt.target} {attempt.describe()}" for attempt in tried)
