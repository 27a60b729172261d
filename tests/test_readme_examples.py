"""README's examples outside "Testing with portd" (tests/testing/test_readme.py runs those):
every TOML block validates, every ``portd`` command line in a console block parses with
the real parser, and each one that can run here runs, its output compared with README's.

Listeners the README puts on fixed ports (5555, 7000) run on port 0 here, as every test
socket does; commands that need the network or root (``connect host.example``,
``wait db:5432``, ``systemctl``) are parsed only.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import tomllib
from pathlib import Path

import pytest

from portd.cli import build_parser
from portd.config import parse_config
from portd.shell.ncargs import connect_target, listen_bind, unix_target
from portd.tls.certs import Authority
from tests.docs import ROOT, blocks
from tests.processes import Spawner, read_to_eof, spawn, tcp_client
from tests.support import Daemon, require_tool, run_portd
from tests.tls.files import write_pair

__all__ = ["spawn"]  # the fixture, for this module


def console_commands() -> list[str]:
    """Every ``$ portd ...`` or ``# portd ...`` command line, comments and redirections
    cut off; a line that runs several commands (``&&``, ``|``, ``;``) gives each portd one.
    Split as a shell would, so a ``|`` inside quotes (a jq filter) stays in its word."""
    found = []
    for block in blocks("console"):
        for line in block.splitlines():
            if not line.startswith(("$ ", "# ")):
                continue
            lexer = shlex.shlex(line[2:], posix=True, punctuation_chars="|&;<>")
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words: list[str] = []
            for token in [*lexer, ";"]:
                if token in ("|", "&&", "||", ";", "&"):
                    cut = next((i for i, w in enumerate(words) if w in ("<", ">", ">>")), None)
                    command = words[:cut]
                    if command and command[0] == "portd":
                        found.append(shlex.join(command[1:]))
                    words = []
                else:
                    words.append(token)
    return found


def console_block(first_line: str) -> str:
    """The console block whose first line starts with ``first_line`` (by content, so a
    section added to README moves nothing)."""
    found = [block for block in blocks("console") if block.startswith(first_line)]
    assert len(found) == 1, f"{len(found)} console blocks start with {first_line!r}"
    return found[0]


def test_every_toml_block_is_valid(tmp_path: Path) -> None:
    listener = '[[listener]]\nbind = "127.0.0.1:0"\nhandler = "echo"\n'
    tls = tmp_path / "tls"  # README's certificate files, made here (portd cert would)
    tls.mkdir()
    write_pair(tls, Authority("readme CA").issue(["localhost"]), "x")
    (tls / "x-cert.pem").rename(tls / "cert.pem")
    (tls / "x-key.pem").rename(tls / "key.pem")
    (tls / "ca.pem").write_bytes(Authority("readme upstream CA").cert_pem)
    checked = 0
    for block in blocks("toml"):
        # README's upload directory is under /var/lib/portd, which this host may lack:
        # check_settings refuses a directory whose parent is missing, as serve would.
        text = block.replace("/etc/portd/tls", str(tls))
        data = tomllib.loads(text.replace("/var/lib/portd", str(tmp_path)))
        if "project" in data:  # a plugin's pyproject.toml
            assert data["project"]["entry-points"]["portd.handlers"]
            continue
        if "listener" not in data:  # a fragment of a [[listener]] table
            data = tomllib.loads(listener + text)
        parse_config(data, "README.md")
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("line", console_commands())
def test_every_portd_command_line_parses(line: str) -> None:
    args, extras = build_parser().parse_known_args(shlex.split(line))
    assert extras == []
    if args.command == "listen":
        listen_bind(args.where, args.port, args.source, args.unix)
    if args.command == "connect" and unix_target(args.target, args.unix) is None:
        connect_target(args.target)


def test_check_prints_what_readme_shows() -> None:
    block = console_block("$ portd check config.example.toml").splitlines()
    assert block[0] == "$ portd check config.example.toml"
    shown = run_portd("check", "config.example.toml", cwd=ROOT)
    assert (shown.returncode, shown.stderr) == (0, "")
    assert shown.stdout.splitlines() == block[1:5]


def test_status_prints_readme_columns(tmp_path: Path) -> None:
    """README's numbers are made up; the shape (first line, columns) is what prints."""
    config = tmp_path / "portd.toml"
    config.write_text('[[listener]]\nname = "echo"\nbind = "127.0.0.1:0"\nhandler = "echo"\n')
    daemon = Daemon(["-c", str(config)])
    try:
        daemon.ready()
        shown = run_portd("status", "-c", str(config))
    finally:
        daemon.stop()
    example = console_block("$ portd status").splitlines()
    assert shown.returncode == 0, shown.stderr
    first, header, row = shown.stdout.splitlines()
    assert re.fullmatch(rf"portd \S+, pid \d+, up \d+ s, {re.escape(str(config))}", first)
    assert header.split() == example[2].split()
    assert row.split()[:4] == ["echo", "tcp", row.split()[2], "echo"]


def test_reload_prints_what_readme_shows(tmp_path: Path) -> None:
    block = console_block("$ portd reload").splitlines()
    config = tmp_path / "portd.toml"
    web = '[[listener]]\nname = "web"\nbind = "127.0.0.1:0"\nhandler = "echo"\n'
    config.write_text(web)
    daemon = Daemon(["-c", "portd.toml"], cwd=tmp_path)
    try:
        daemon.ready()
        config.write_text(web + "backlog = 0\n")
        done = run_portd(*shlex.split(block[0][2:])[1:], cwd=tmp_path)
    finally:
        daemon.stop()
    assert (done.stdout, done.stderr.splitlines()) == ("", [block[1]])
    assert (block[2], str(done.returncode)) == ("$ echo $?", block[3])


@pytest.fixture
def shell_block() -> list[str]:
    lines = console_block("$ portd listen 5555 > output.txt").splitlines()
    assert lines[0].startswith("$ portd listen 5555 > output.txt")
    return lines


@pytest.mark.parametrize("index", [0, 2], ids=["listen", "listen-nc-style"])
def test_listen_receives_a_file_into_stdout(
    spawn: Spawner, tmp_path: Path, shell_block: list[str], index: int
) -> None:
    words = shlex.split(shell_block[index][2:].split(">")[0])[1:]
    words = ["0" if w == "5555" else w for w in words]
    output = tmp_path / "output.txt"
    listen = spawn.portd(*words, stdout=output)
    if index == 0:
        expected = shell_block[1].replace("5555", r"(\d+)").replace("[", r"\[")
        listen.expect(expected.replace("(tcp)", r"\(tcp\)"))
    with tcp_client(listen.port(r"^listening on .*:(\d+) \(tcp\)$")) as client:
        client.sendall(b"the file")
    assert listen.wait() == 0
    assert output.read_bytes() == b"the file"


def test_listen_serves_a_file_and_an_echo_handler(
    spawn: Spawner, tmp_path: Path, shell_block: list[str]
) -> None:
    served = tmp_path / "file"
    served.write_bytes(b"served")
    (serve_line,) = [line for line in shell_block if line.startswith("$ portd listen 5000 <")]
    words = shlex.split(serve_line[2:].split("<")[0])[1:]
    listen = spawn.portd(*["0" if w == "5000" else w for w in words], stdin=served)
    with tcp_client(listen.port()) as client:
        client.shutdown(socket.SHUT_WR)
        assert read_to_eof(client) == b"served"
    assert listen.wait() == 0
    (echo_line,) = [line for line in shell_block if line.startswith("$ portd listen -k --echo")]
    words = shlex.split(echo_line[2:].split("#")[0])[1:]
    echo = spawn.portd(*["0" if w == "7000" else w for w in words])
    with tcp_client(echo.port()) as client:
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"
    echo.interrupt()
    assert echo.wait() == 130


@pytest.mark.parametrize(
    "command", ["connect -zv", "scan", "ports --tcp", "services"],
    ids=["connect-z", "scan", "ports", "services"],
)  # fmt: skip
def test_loopback_commands_run(shell_block: list[str], command: str) -> None:
    (shown,) = [line for line in shell_block if line.startswith(f"$ portd {command} ")]
    line = shown[2:].split(" #")[0]
    done = run_portd(*shlex.split(line)[1:], timeout=60)
    assert "Traceback" not in done.stderr
    if command == "connect -zv":  # exit 0 when one of 8000-8010 accepts here, else 1; never data
        assert (done.returncode, done.stdout) in ((0, ""), (1, ""))
    else:
        assert done.returncode == 0, done.stderr
    if command == "services":
        assert done.stdout == shown.split("# ", 1)[1] + "\n"


def test_install_steps_work_with_etc_in_a_directory(tmp_path: Path) -> None:
    """The portd commands of the install block, /etc/portd being a temporary directory."""
    lines = console_block("# python3 -m venv /opt/portd").splitlines()
    etc = tmp_path / "etc-portd"
    etc.mkdir()
    example = run_portd("example-config")
    assert [line for line in lines if "example-config > /etc/portd/portd.toml" in line]
    (etc / "portd.toml").write_text(example.stdout)
    assert "# portd check /etc/portd/portd.toml" in lines
    checked = run_portd("check", str(etc / "portd.toml"))
    assert (checked.returncode, checked.stderr) == (0, "")
    units_line = console_block("# portd units").splitlines()[0]
    words = shlex.split(units_line[2:].replace("/etc/portd", str(etc)))[1:]
    words[words.index("--output-dir") + 1] = str(tmp_path / "units")
    written = run_portd(*words)
    assert written.returncode == 0, written.stderr
    assert (tmp_path / "units" / "portd-activated.service").is_file()


def test_nc_sends_a_file_to_file_receive(tmp_path: Path) -> None:
    """README's file-receive client line (nc -N HOST PORT < file) against the README's table."""
    nc_client_line = console_block("$ nc -N 127.0.0.1 5555").strip()  # noqa: fixed-port (README's text)
    assert nc_client_line.startswith("$ nc -N 127.0.0.1 5555 < ")  # noqa: fixed-port (README's text)
    table = next(b for b in blocks("toml") if 'handler = "file-receive"' in b)
    store = tmp_path / "store"
    text = re.sub(r'directory = "[^"]*"', f'directory = "{store}"', table)
    text = re.sub(r'bind = "[^"]*"', 'bind = "127.0.0.1:0"', text)
    config = tmp_path / "portd.toml"
    config.write_text(text)
    daemon = Daemon(["-c", str(config)])
    try:
        (port,) = daemon.ready().values()
        backup = tmp_path / "backup.tar"
        backup.write_bytes(b"tar bytes" * 100)
        words = nc_client_line[2:].split("<", maxsplit=1)[0].replace("5555", str(port))
        argv = [require_tool("nc"), *shlex.split(words)[1:]]
        with backup.open("rb") as stdin:
            sent = subprocess.run(argv, stdin=stdin, capture_output=True, timeout=30, check=False)
        assert sent.returncode == 0, sent.stderr
        daemon.wait_for("file_received")
    finally:
        daemon.stop()
    (stored,) = [p for p in store.iterdir() if not p.name.startswith(".")]
    assert stored.read_bytes() == backup.read_bytes()
