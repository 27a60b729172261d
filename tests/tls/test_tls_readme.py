"""README's TLS examples run as written: ``portd cert`` then the TOML listener served
and fetched with curl; ``listen --tls`` and ``connect --tls``; the verification failure
line; and the "TLS servers" pytest block, through pytester."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from portd.testing import Server
from tests.processes import Spawner, spawn
from tests.support import Daemon, require_tool, run_portd
from tests.test_readme_examples import README, blocks, console_block

pytest_plugins = ["pytester"]
__all__ = ["spawn"]  # the fixture, for this module


def tls_section() -> str:
    return README.split("### TLS\n", 1)[1].split("\n### ", 1)[0]


@pytest.mark.needs_tool("curl")
def test_portd_cert_then_serve_then_curl(tmp_path: Path) -> None:
    lines = console_block("$ portd cert --out tls").splitlines()
    made = run_portd(*shlex.split(lines[0][2:])[1:], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines() == lines[1:3]
    (table,) = [block for block in blocks("toml") if "tls_cert" in block]
    text = table.replace("/etc/portd/tls", str(tmp_path / "tls")).replace(":8443", ":0")
    config = tmp_path / "tls.toml"
    config.write_text(text)
    daemon = Daemon(["-c", str(config)])
    try:
        port = daemon.ready()["https"]
        curl_words = shlex.split(lines[3][2:].replace("8443", str(port)))
        done = subprocess.run(
            [require_tool("curl"), *curl_words[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        daemon.stop()
    assert (done.returncode, done.stdout) == (0, lines[4] + "\n"), done.stderr


def test_listen_tls_and_connect_insecure_as_shown(spawn: Spawner, tmp_path: Path) -> None:
    lines = console_block("$ portd listen --tls").splitlines()
    listen_words = shlex.split(lines[0][2:].split(">")[0].replace(":8443", ":0"))[1:]
    received = tmp_path / "received.txt"
    listen = spawn.portd(*listen_words, stdout=received)
    port = listen.port()
    shown = (
        re.escape(lines[2].split("fingerprint ")[0]) + "fingerprint ([0-9A-F]{2}:){31}[0-9A-F]{2}"
    )
    listen.expect("^" + shown + "$")
    sent = tmp_path / "file"
    sent.write_bytes(b"over tls\n")
    connect_words = shlex.split(lines[3][2:].split("<")[0].replace("8443", str(port)))[1:]
    connect = spawn.portd(*connect_words, stdin=sent)
    assert (connect.wait(), listen.wait()) == (0, 0)
    assert received.read_bytes() == b"over tls\n"


def test_the_failure_line_is_what_connect_prints(tls_expired_server: Server) -> None:
    lines = console_block("$ portd listen --tls").splitlines()
    words = shlex.split(lines[5][2:])[1:]
    words[words.index("--ca") + 1] = tls_expired_server.ca_path
    words[-1] = str(tls_expired_server.port)
    done = run_portd(*words)
    assert done.returncode == 1
    assert done.stderr == lines[6].replace("8443", str(tls_expired_server.port)) + "\n"


def test_the_tls_servers_pytest_block_passes(pytester: pytest.Pytester) -> None:
    section = README.split("### TLS servers", 1)[1].split("\n### ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    pytester.makeini(
        "[pytest]\naddopts = -p no:cacheprovider -p no:hypothesispytest\n"
        "asyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
    )
    pytester.makepyfile(test_tls_readme=code)
    # In a subprocess: an in-process run would drop the modules it imported (httpcore)
    # from sys.modules, and httpx would then re-import them under this test's feet.
    result = pytester.runpytest_subprocess()
    assert result.ret == 0, result.stdout.str()
    assert result.parseoutcomes()["passed"] == 3
