"""Unit files: the shipped ones and those `portd units` writes pass systemd's own checks."""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.support import PORTD, require_tool, run_portd

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "systemd"
PORTD_EXECUTABLE = Path(PORTD[0]).parent / "portd"
DNS_PORT = 5353  # written into unit files only; nothing binds it


def localized(directory: Path, units: Path) -> list[Path]:
    """Copies whose ExecStart names the portd under test (verify checks it exists)."""
    copies = []
    for unit in sorted(units.iterdir()):
        text = unit.read_text().replace("/usr/local/bin/portd", str(PORTD_EXECUTABLE))
        copy = directory / unit.name
        copy.write_text(text)
        copies.append(copy)
    return copies


def exposure(unit: Path, threshold: int) -> tuple[int, float]:
    """systemd-analyze's exit code at ``threshold`` and the overall exposure it reports."""
    result = subprocess.run(
        [require_tool("systemd-analyze"), "security", "--offline=true", f"--threshold={threshold}",
         str(unit)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    return result.returncode, float(found.group(1))


def verify(units: list[Path]) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify, with portd(1) installed where man finds it (as README's
    install steps put it), since verify checks Documentation=man:portd(1) exists."""
    manpath = units[0].parent / "man"
    (manpath / "man1").mkdir(parents=True, exist_ok=True)
    (manpath / "man1" / "portd.1").write_bytes((ROOT / "man" / "portd.1").read_bytes())
    return subprocess.run(
        [require_tool("systemd-analyze"), "verify", *map(str, units)],
        capture_output=True, text=True, check=False, timeout=60,
        env={**os.environ, "MANPATH": str(manpath)},
    )  # fmt: skip


def test_shipped_units_verify_without_a_word(tmp_path: Path) -> None:
    result = verify(localized(tmp_path, SHIPPED))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize(
    ("unit", "threshold", "limit"),
    [("portd.service", 20, 2.0), ("portd-activated.service", 10, 1.0)],
)
def test_shipped_services_pass_their_security_threshold(
    tmp_path: Path, unit: str, threshold: int, limit: float
) -> None:
    localized(tmp_path, SHIPPED)
    code, level = exposure(tmp_path / unit, threshold)
    assert code == 0
    assert level <= limit


def test_units_writes_one_named_socket_unit_per_listener_and_a_hardened_service(
    tmp_path: Path,
) -> None:
    config = tmp_path / "portd.toml"
    config.write_text(
        textwrap.dedent(f"""
        [[listener]]
        name = "web"
        bind = "*:8080"
        handler = "echo"
        backlog = 512

        [[listener]]
        name = "dns"
        bind = "127.0.0.1:{DNS_PORT}"
        protocol = "udp"
        handler = "echo"
    """)
    )
    out = tmp_path / "units"
    result = run_portd(
        "units", str(config), "--portd", str(PORTD_EXECUTABLE), "--output-dir", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "portd-activated.service",
        "portd-dns.socket",
        "portd-web.socket",
    ]
    web = (out / "portd-web.socket").read_text()
    assert "ListenStream=0.0.0.0:8080\nListenStream=[::]:8080\n" in web
    assert "FileDescriptorName=web\n" in web
    assert "Backlog=512\n" in web
    dns = (out / "portd-dns.socket").read_text()
    assert f"ListenDatagram=127.0.0.1:{DNS_PORT}\n" in dns
    assert "FileDescriptorName=dns\n" in dns
    service = (out / "portd-activated.service").read_text()
    assert f"ExecStart={PORTD_EXECUTABLE} serve -c {config} --activation-only\n" in service
    assert "Requires=portd-web.socket portd-dns.socket\n" in service
    check = verify(sorted(out.iterdir()))
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
    code, level = exposure(out / "portd-activated.service", 10)
    assert (code, level <= 1.0) == (0, True)


def test_units_leaves_port_zero_listeners_to_bind_and_gives_them_a_network(tmp_path: Path) -> None:
    config = tmp_path / "portd.toml"
    config.write_text('[[listener]]\nname = "any"\nbind = "127.0.0.1:0"\nhandler = "echo"\n')
    result = run_portd("units", str(config))
    assert result.returncode == 0
    assert "# portd-activated.service\n" in result.stdout
    assert ".socket" not in result.stdout.replace("After=network.target", "")
    assert "--activation-only" not in result.stdout
    assert "PrivateNetwork=no\n" in result.stdout


def test_a_newline_in_the_config_path_cannot_inject_a_directive(tmp_path: Path) -> None:
    """The path was pasted into ExecStart= as is: a newline started another directive."""
    directory = tmp_path / "x\nExecStartPre=touch pwned\n"
    directory.mkdir()
    config = directory / "portd.toml"
    config.write_text(f'[[listener]]\nbind = "127.0.0.1:{DNS_PORT}"\nhandler = "echo"\n')
    out = tmp_path / "units"
    result = run_portd("units", str(config), "--output-dir", str(out))
    assert result.returncode == 64
    assert result.stderr.count("\n") == 1
    assert "holds a control character; a unit file cannot carry it" in result.stderr
    assert not out.exists()


def test_spaces_quotes_percent_and_dollar_in_paths_are_quoted_as_systemd_reads_them(
    tmp_path: Path,
) -> None:
    directory = tmp_path / 'my "cfg" %q $HOME \\ dir'
    directory.mkdir()
    config = directory / "portd.toml"
    config.write_text(f'[[listener]]\nbind = "127.0.0.1:{DNS_PORT}"\nhandler = "echo"\n')
    out = tmp_path / "units"
    result = run_portd(
        "units", str(config), "--portd", str(PORTD_EXECUTABLE), "--output-dir", str(out)
    )
    assert result.returncode == 0, result.stderr
    service = (out / "portd-activated.service").read_text()
    quoted = str(config).replace("%", "%%").replace("$", "$$").replace("\\", "\\\\")
    quoted = '"' + quoted.replace('"', '\\"') + '"'
    assert f"ExecStart={PORTD_EXECUTABLE} serve -c {quoted} --activation-only\n" in service
    check = verify(sorted(out.iterdir()))
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")


def test_a_port_zero_listener_weakening_the_unit_is_said_on_stderr(tmp_path: Path) -> None:
    config = tmp_path / "portd.toml"
    config.write_text('[[listener]]\nname = "any"\nbind = "127.0.0.1:0"\nhandler = "echo"\n')
    result = run_portd("units", str(config))
    assert result.returncode == 0
    [warning] = result.stderr.splitlines()
    assert warning.startswith('portd: warning: listener "any" binds port 0: ')
    assert "keeps network access (PrivateNetwork=no" in warning
    assert "# network access (PrivateNetwork=no): give them fixed ports" in result.stdout
