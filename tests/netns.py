"""A network namespace of the test's own, so doctor and ports tests touch nothing of the
host: their own loopback, interface addresses, firewall rules, sysctls and /etc/hosts.

The namespace lives as long as its anchor (``unshare --net --mount`` around ``cat``,
ended by closing its stdin); every command runs inside it through ``nsenter``. Fixed
port numbers are fine in here: nothing else lives in it. Needs root, unshare, nsenter
and ip; skipped without them unless PORTD_REQUIRE_TOOLS=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.processes import WAIT_S, Process, Spawner
from tests.support import PORTD, require_tool

HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
HOLDER = Path(__file__).with_name("holder.py")
# The extra interface and its addresses (documentation and unique-local ranges).
INTERFACE = "pd0"
ADDRESS_V4 = "192.0.2.10"
ADDRESS_V6 = "fd00:9::10"


class Netns:
    """A network and mount namespace with lo up, ``pd0`` holding ADDRESS_V4 and
    ADDRESS_V6, and /etc/hosts listing localhost as 127.0.0.1 and ::1."""

    def __init__(self, directory: Path, spawn: Spawner) -> None:
        self.spawn = spawn
        hosts = directory / "hosts"
        hosts.write_text(HOSTS, encoding="ascii")
        script = f"mount --bind {hosts} /etc/hosts && ip link set lo up && echo ready && exec cat"
        self.anchor = subprocess.Popen(
            [require_tool("unshare"), "--net", "--mount", "--propagation", "private",
             "sh", "-c", script],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.anchor.stdout is not None
        if self.anchor.stdout.readline() != "ready\n":
            self.anchor.wait(WAIT_S)
            pytest.fail(f"unshare exited {self.anchor.returncode} before the namespace was ready")
        pid = self.anchor.pid
        self.prefix = [require_tool("nsenter"), f"--net=/proc/{pid}/ns/net",
                       f"--mount=/proc/{pid}/ns/mnt", f"--wd={Path.cwd()}"]  # fmt: skip
        self._add_interface()

    def _add_interface(self) -> None:
        # dummy is a module some kernels lack; veth (with its peer up) serves the same.
        if self.run("ip", "link", "add", INTERFACE, "type", "dummy", check=False).returncode:
            self.run("ip", "link", "add", INTERFACE, "type", "veth", "peer", "name", "pd1")
            self.run("ip", "link", "set", "pd1", "up")
        self.run("ip", "addr", "add", f"{ADDRESS_V4}/24", "dev", INTERFACE)
        self.run("ip", "-6", "addr", "add", f"{ADDRESS_V6}/64", "dev", INTERFACE, "nodad")
        self.run("ip", "link", "set", INTERFACE, "up")

    def run(
        self, *argv: str, check: bool = True, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace to completion."""
        done = subprocess.run([*self.prefix, *argv], capture_output=True, text=True,
                              timeout=60, check=False, **kwargs)  # fmt: skip
        if check and done.returncode:
            pytest.fail(f"{argv} exited {done.returncode}: {done.stderr}")
        return done

    def portd(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``portd ARGS`` inside the namespace to completion (any exit status)."""
        return self.run(*PORTD, *args, check=False, **kwargs)

    def start(self, *argv: str, **options: Any) -> Process:
        """Start a long-running program inside the namespace (stopped at teardown)."""
        return self.spawn(*self.prefix, *argv, **options)

    def hold(self, *sockets: dict[str, Any], prefix: Sequence[str] = ()) -> Process:
        """Start tests/holder.py inside the namespace holding ``sockets``; wait until ready."""
        holder = self.start(*prefix, sys.executable, str(HOLDER), json.dumps(sockets),
                            stdin=subprocess.PIPE)  # fmt: skip
        holder.expect("^ready$")
        return holder

    def sysctl(self, name: str, value: str) -> None:
        """Set a sysctl of this namespace (net.* settings are per namespace)."""
        self.run("sysctl", "-q", "-w", f"{name}={value}")

    def nft(self, rules: str) -> None:
        """Load nftables rules (``nft -f -`` syntax) into this namespace."""
        self.run(require_tool("nft"), "-f", "-", input=rules)

    def close(self) -> None:
        """End the anchor; the namespace goes once the last process in it has exited."""
        assert self.anchor.stdin is not None
        self.anchor.stdin.close()
        self.anchor.wait(WAIT_S)
        if self.anchor.stdout is not None:
            self.anchor.stdout.close()


@pytest.fixture
def netns(tmp_path: Path, spawn: Spawner) -> Iterator[Netns]:
    """A fresh network namespace for this test (root only)."""
    if os.geteuid() != 0:
        if os.environ.get("PORTD_REQUIRE_TOOLS") == "1":
            pytest.fail("network namespace tests need root (PORTD_REQUIRE_TOOLS=1)")
        pytest.skip("network namespaces need root")
    require_tool("ip")
    namespace = Netns(tmp_path, spawn)
    try:
        yield namespace
    finally:
        spawn.stop_all()
        namespace.close()
