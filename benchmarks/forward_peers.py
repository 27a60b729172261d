"""The forwarders the forward benchmarks compare, each started in front of one echo.

* **direct**: no forwarder: the client talks to the echo itself (the floor).
* **portd**: ``portd forward 127.0.0.1:P 127.0.0.1:ECHO --log-level warning`` (``-u``).
* **minimal**: ``reference_forward.py``, two uvloop Protocols with flow control both ways.
* **socat**: ``socat TCP-LISTEN:P,...,fork TCP:127.0.0.1:ECHO`` (UDP: ``UDP-LISTEN,fork``).
* **haproxy**: ``mode tcp``, ``nbthread 1``, one frontend, one backend server.
* **toxiproxy**: a toxiproxy server binary (``$PORTD_BENCH_TOXIPROXY`` or
  ``toxiproxy-server`` on PATH) with one proxy made through its API; skipped when absent.

Ports are held as servers.py holds socat's: a bound, not listening, SO_REUSEADDR socket
keeps the number while the forwarder (which sets SO_REUSEADDR too) binds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from processes import read_line
from servers import (
    HERE,
    HOST,
    READY_TIMEOUT_S,
    Server,
    ServerError,
    ServerSpec,
    launch,
    wait_until_echoes,
)

PEERS = ("direct", "portd", "minimal", "socat", "haproxy", "toxiproxy")


@contextlib.contextmanager
def held_port(kind: int = socket.SOCK_STREAM) -> Iterator[int]:
    """A port number nobody else can bind while the block runs (TCP)."""
    with socket.socket(socket.AF_INET, kind) as hold:
        hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        hold.bind((HOST, 0))
        yield hold.getsockname()[1]


def free_udp_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A number, freed before use (a held UDP socket would share the port)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


def toxiproxy_binary() -> str | None:
    """The toxiproxy server to compare with, if this machine has one."""
    return os.environ.get("PORTD_BENCH_TOXIPROXY") or shutil.which("toxiproxy-server")


def start_echo(transport: str) -> Server:
    """The upstream every forwarder forwards to: the reference uvloop echo."""
    spec = ServerSpec("echo", "reference", transport)  # type: ignore[arg-type]
    server = launch(spec, [sys.executable, str(HERE / "reference_echo.py"), transport],
                    stdout=subprocess.PIPE)  # fmt: skip
    _read_listening(server)
    return server


def _read_listening(server: Server) -> None:
    assert server.proc.stdout is not None
    line = read_line(server.proc.stdout, READY_TIMEOUT_S)
    if not line:
        server.stop()
        raise ServerError(f"{server.name} printed no listening line")
    server.port = int(json.loads(line)["port"])


def start_peer(name: str, transport: str, echo_port: int, workdir: Path) -> Server | None:
    """Start forwarder ``name`` in front of ``echo_port``; None for ``direct``.

    Raises:
        ServerError: it did not come up, or the machine lacks it.
    """
    if name == "direct":
        return None
    spec = ServerSpec(name, "reference", transport)  # type: ignore[arg-type]
    if name == "minimal":
        server = launch(spec, [sys.executable, str(HERE / "reference_forward.py"), transport,
                               "0", str(echo_port)], stdout=subprocess.PIPE)  # fmt: skip
        _read_listening(server)
    elif transport == "udp":
        server = _start_on(spec, free_udp_port(), echo_port, workdir)
    else:
        with held_port() as port:
            server = _start_on(spec, port, echo_port, workdir)
    return server


def _start_on(spec: ServerSpec, port: int, echo_port: int, workdir: Path) -> Server:
    api = free_udp_port(socket.SOCK_STREAM) if spec.name == "toxiproxy" else 0  # freed: a tiny race
    argv = _argv(spec, port, echo_port, workdir, api)
    server = launch(spec, argv, stdout=subprocess.DEVNULL)
    server.port = port
    try:
        if spec.name == "toxiproxy":
            _make_toxiproxy_proxy(server, api, port, echo_port)
        wait_until_echoes(server)
    except BaseException:
        server.stop()
        raise
    return server


def _argv(spec: ServerSpec, port: int, echo_port: int, workdir: Path, api: int) -> list[str]:
    udp = spec.transport == "udp"
    if spec.name == "portd":
        return [sys.executable, "-m", "portd", "forward", f"{HOST}:{port}", f"{HOST}:{echo_port}",
                "--log-level", "warning", *(["-u"] if udp else [])]  # fmt: skip
    if spec.name == "socat":
        if udp:
            return ["socat", f"UDP-LISTEN:{port},bind={HOST},reuseaddr,fork",
                    f"UDP:{HOST}:{echo_port}"]  # fmt: skip
        return ["socat", f"TCP-LISTEN:{port},bind={HOST},reuseaddr,fork,backlog=1024",
                f"TCP:{HOST}:{echo_port}"]  # fmt: skip
    if spec.name == "haproxy":
        return [_need("haproxy"), "-db", "-f", str(_haproxy_config(workdir, port, echo_port))]
    if spec.name == "toxiproxy":
        binary = toxiproxy_binary()
        if binary is None:
            raise ServerError("no toxiproxy server: set PORTD_BENCH_TOXIPROXY")
        return [binary, "-host", HOST, "-port", str(api)]
    raise ServerError(f"no forwarder {spec.name!r} for {spec.transport}")


def _make_toxiproxy_proxy(server: Server, api: int, port: int, echo_port: int) -> None:
    from servers import retry_until

    body = json.dumps({"name": "bench", "listen": f"{HOST}:{port}",
                       "upstream": f"{HOST}:{echo_port}"}).encode()  # fmt: skip

    def create() -> bool | None:
        server.check_alive()
        request = urllib.request.Request(f"http://{HOST}:{api}/proxies", data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:  # noqa: S310 - http: only
                return answer.status == 201 or None
        except OSError:
            return None

    retry_until(create, READY_TIMEOUT_S, "toxiproxy's API")


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ServerError(f"{tool} is not installed")
    return path


def _haproxy_config(workdir: Path, port: int, echo_port: int) -> Path:
    path = workdir / f"haproxy-{port}.cfg"
    path.write_text(f"""global
    nbthread 1
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend bench
    bind {HOST}:{port}
    default_backend echo
backend echo
    server echo {HOST}:{echo_port}
""", encoding="utf-8")  # fmt: skip
    return path
