"""README's exec, internal-services and chat examples run as written: each TOML table
serves (on port 0) and its console lines give what README shows."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
from pathlib import Path

from tests.docs import blocks
from tests.processes import Spawner, read_to_eof, spawn, tcp_client
from tests.support import Daemon, require_tool
from tests.test_readme_examples import console_block

__all__ = ["spawn"]  # the fixture, for this module


def serve_table(tmp_path: Path, marker: str) -> tuple[Daemon, int, str]:
    """Serve README's TOML table holding ``marker`` on port 0: the daemon, its port and
    the port README wrote."""
    table = next(block for block in blocks("toml") if marker in block)
    written = re.search(r'bind = "127\.0\.0\.1:(\d+)"', table)
    assert written is not None
    config = tmp_path / "portd.toml"
    config.write_text(table.replace(written.group(0), 'bind = "127.0.0.1:0"'))
    daemon = Daemon(["-c", str(config)])
    (port,) = daemon.ready().values()
    return daemon, port, written.group(1)


def test_the_exec_table_counts_what_nc_sends(tmp_path: Path) -> None:
    nc = require_tool("nc")
    block = console_block("$ printf hello | nc -N 127.0.0.1 7100").splitlines()  # noqa: fixed-port (README's text)
    daemon, port, readme_port = serve_table(tmp_path, 'handler = "exec"')
    try:
        line = block[0][2:].replace(readme_port, str(port))
        words = shlex.split(line.split("|", 1)[1])
        done = subprocess.run(
            [nc, *words[1:]], input=b"hello", capture_output=True, timeout=30, check=False
        )
        assert done.stdout.decode().strip() == block[1]
        closed = daemon.wait_for("connection_closed")
        assert (closed["exit_code"], closed["error"]) == (0, None)
    finally:
        daemon.stop()


def test_the_listen_exec_lines(spawn: Spawner) -> None:
    lines = console_block("$ portd listen -k --exec 'wc -c' 127.0.0.1:7000").splitlines()  # noqa: fixed-port (README's text)
    counting = spawn.portd(*shlex.split(lines[0][2:].replace(":7000", ":0"))[1:])
    port = counting.port()
    assert counting.lines[0] == lines[1].replace("7000", str(port))
    with tcp_client(port) as client:
        client.sendall(b"four")
        client.shutdown(socket.SHUT_WR)
        assert read_to_eof(client).strip() == b"4"
    greeting = spawn.portd(*shlex.split(lines[2][2:].replace(":7001", ":0"))[1:])
    with tcp_client(greeting.port()) as client:
        assert read_to_eof(client) == b"hello 127.0.0.1\n"
    anyone = spawn.portd(*shlex.split(lines[4][2:].replace(" 7002", " 0"))[1:])
    port = anyone.port()
    assert anyone.lines[0] == lines[5].replace("7002", str(port))
    for process in (counting, greeting):
        process.interrupt()
        assert process.wait() == 130


def test_the_exec_behind_tls_lines(spawn: Spawner) -> None:
    openssl = require_tool("openssl")
    lines = console_block("$ portd listen -k --tls -c").splitlines()
    listen = spawn.portd(*shlex.split(lines[0][2:].replace(":7443", ":0"))[1:])
    port = listen.port()
    words = shlex.split(lines[1][2:].split("|", 1)[1].replace(":7443", f":{port}"))
    assert words[0] == "openssl"
    assert words[-1] == "2>/dev/null"
    done = subprocess.run([openssl, *words[1:-1]], input=b"world\n", capture_output=True,
                          timeout=30, check=False)  # fmt: skip
    assert done.stdout.decode() == lines[2] + "\n", done.stderr
    listen.interrupt()
    assert listen.wait() == 130


def test_the_daytime_table_answers_nc_u(tmp_path: Path) -> None:
    nc = require_tool("nc")
    block = console_block("$ echo | nc -u -w 1 127.0.0.1 7013").splitlines()  # noqa: fixed-port (README's text)
    daemon, port, readme_port = serve_table(tmp_path, 'handler = "daytime"')
    try:
        words = shlex.split(block[0][2:].split("|", 1)[1].replace(readme_port, str(port)))
        done = subprocess.run(
            [nc, *words[1:]], input=b"\n", capture_output=True, timeout=30, check=False
        )
    finally:
        daemon.stop()
    shape = re.sub(r"[A-Za-z]+day, [A-Za-z]+ \d\d, \d{4} \d\d:\d\d:\d\d", "DATE", block[1])
    answer = done.stdout.decode()
    assert answer.endswith("\r\n")
    assert re.sub(r"[A-Za-z]+day, [A-Za-z]+ \d\d, \d{4} \d\d:\d\d:\d\d", "DATE",
                  answer.strip()) == shape  # fmt: skip


def test_the_chat_table_announces_and_names_lines(tmp_path: Path) -> None:
    shown = next(block for block in blocks("text") if block.startswith("<announce> you are"))
    daemon, port, _ = serve_table(tmp_path, 'handler = "chat"')
    try:
        with tcp_client(port) as one:
            first = one.recv(200).decode()
            with tcp_client(port) as two:
                second = two.recv(200).decode()
                joined = one.recv(200).decode()
                one.sendall(b"hello\n")
                said = two.recv(200).decode()
            left = one.recv(200).decode()
    finally:
        daemon.stop()
    assert first == "<announce> you are <user1>; here already: nobody\n"
    assert second == "<announce> you are <user2>; here already: <user1>\n"
    assert re.fullmatch(r"<announce> <user2> joined from 127\.0\.0\.1:\d+\n", joined)
    assert said == "<user1> hello\n"
    assert left == "<announce> <user2> left\n"
    shapes = (
        r"<announce> you are <user\d+>; here already: (nobody|<user\d+>(, <user\d+>)*)",
        r"<user\d+> .+",
        r"<announce> <user\d+> joined from [0-9.]+:\d+",
        r"<announce> <user\d+> left( \(disconnected: not reading\))?",
    )
    for line in shown.splitlines():  # every line README shows is one chat says
        assert any(re.fullmatch(shape, line) for shape in shapes), line
