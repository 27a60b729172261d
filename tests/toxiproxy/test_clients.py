"""Real toxiproxy clients drive ``portd toxiproxy`` exactly as their READMEs show: curl
doing what toxiproxy's README does with toxiproxy-cli, toxiproxy-node-client (npm,
maintained, what testcontainers-node builds on) and toxiproxy-python (PyPI). Only the
API's address and the upstream differ: port 0, a portd echo server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from portd.testing import serve
from tests.support import require_tool
from tests.toxiproxy.conftest import ToxiproxyDaemon

NODE_CLIENT = "toxiproxy-node-client@4.1.0"


def curl(api: ToxiproxyDaemon, *args: str) -> tuple[int, str]:
    done = subprocess.run(
        [require_tool("curl"), "-s", "-w", "\n%{http_code}", *args[:-1],
         f"http://{api.host}:{api.port}{args[-1]}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    body, _, code = done.stdout.rpartition("\n")
    return int(code), body


def echo_ms(port: int) -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        started = time.perf_counter()
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"
        return (time.perf_counter() - started) * 1000


def test_curl_does_what_toxiproxys_readme_does(toxiproxy: ToxiproxyDaemon) -> None:
    """README's steps, each on port 0: create a proxy, list, add a latency toxic of
    1000 ms, remove latency_downstream, delete the proxy."""
    with serve("echo") as echo:
        code, body = curl(toxiproxy, "-X", "POST", "-d", json.dumps(
            {"name": "redis", "listen": "localhost:0", "upstream": f"localhost:{echo.port}"}
        ), "/proxies")  # fmt: skip
        assert code == 201
        port = int(json.loads(body)["listen"].rpartition(":")[2])
        code, body = curl(toxiproxy, "/proxies")
        assert (code, list(json.loads(body))) == (200, ["redis"])
        code, body = curl(toxiproxy, "-X", "POST", "-d",
                          '{"type": "latency", "attributes": {"latency": 1000}}',
                          "/proxies/redis/toxics")  # fmt: skip
        assert (code, json.loads(body)["name"]) == (200, "latency_downstream")
        assert echo_ms(port) >= 998
        code, _ = curl(toxiproxy, "-X", "DELETE", "/proxies/redis/toxics/latency_downstream")
        assert code == 204
        assert echo_ms(port) < 500
        assert curl(toxiproxy, "-X", "DELETE", "/proxies/redis")[0] == 204
        assert curl(toxiproxy, "/proxies") == (200, "{}\n")


@pytest.fixture(scope="session")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """toxiproxy-node-client installed from npm into a directory of this test run."""
    npm = require_tool("npm")
    require_tool("node")
    where = tmp_path_factory.mktemp("node-client")
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(where),
         NODE_CLIENT], capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        if os.environ.get("PORTD_REQUIRE_TOOLS") == "1":
            pytest.fail(f"npm install {NODE_CLIENT} failed: {done.stderr[-500:]}")
        pytest.skip(f"npm install {NODE_CLIENT} failed (no registry?)")
    return where


NODE_README = """
"use strict";
const toxiproxyClient = require("toxiproxy-node-client");
const toxiproxy = new toxiproxyClient.Toxiproxy(process.env.API);
const proxyBody = {
  listen: "localhost:0",
  name: "redis",
  upstream: process.env.UPSTREAM
};
const toxic = toxiproxy.createProxy(proxyBody)
  .then((proxy) => {
    const toxicBody = {
      attributes: { rate: 1000 },
      type: "bandwidth"
    };
    return proxy.addToxic(toxicBody);
  });
toxic.then((made) => console.log(JSON.stringify({name: made.name, type: made.type,
  stream: made.stream, attributes: made.attributes})));
"""


def test_the_node_client_readme_example(toxiproxy: ToxiproxyDaemon, node_client: Path) -> None:
    with serve("echo") as echo:
        done = subprocess.run(
            ["node", "-e", NODE_README], cwd=node_client, capture_output=True, text=True,
            timeout=60, check=False, env={**os.environ, "API": f"http://{toxiproxy.host}:"
            f"{toxiproxy.port}", "UPSTREAM": f"localhost:{echo.port}",
            "NODE_PATH": str(node_client / "node_modules")},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        made = json.loads(done.stdout)
        assert {key: made[key] for key in ("name", "type", "stream", "attributes")} == {
            "name": "bandwidth_downstream", "type": "bandwidth", "stream": "downstream",
            "attributes": {"rate": 1000},
        }  # fmt: skip
        status, proxy = toxiproxy.request("GET", "/proxies/redis")
        assert (status, proxy["toxics"][0]["attributes"]) == (200, {"rate": 1000})
        port = int(proxy["listen"].rpartition(":")[2])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"r" * 200_000)
            started, got = time.perf_counter(), 0
            while got < 200_000:
                got += len(client.recv(65536))
            assert 0.18 <= time.perf_counter() - started <= 0.3  # 1000 KB/s


PYTHON_README = """
import sys
from toxiproxy.api import APIConsumer
from toxiproxy import Toxiproxy

APIConsumer.host, APIConsumer.port = sys.argv[1], int(sys.argv[2])
server = Toxiproxy()
proxy = server.create(name="redis", upstream=sys.argv[3], listen="127.0.0.1:0")
proxy.add_toxic(type="latency", attributes={"latency": 300})
print(proxy.listen, [toxic.name for toxic in proxy.toxics().values()])
proxy.disable()
print(server.get_proxy("redis").enabled)
proxy.enable()
proxy.destroy_toxic("latency_downstream")
print(sorted(server.proxies()), proxy.toxics())
server.destroy_all()
print(server.proxies())
"""


def test_the_python_client_from_pypi(toxiproxy: ToxiproxyDaemon) -> None:
    pytest.importorskip("toxiproxy")
    with serve("echo") as echo:
        done = subprocess.run(
            [sys.executable, "-c", PYTHON_README, toxiproxy.host, str(toxiproxy.port),
             f"127.0.0.1:{echo.port}"], capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("127.0.0.1:")
    assert lines[0].endswith("['latency_downstream']")
    assert lines[1:] == ["False", "['redis'] {}", "{}"]
