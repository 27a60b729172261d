"""toxiproxy's HTTP API as ``portd toxiproxy`` answers it: endpoints, JSON shapes,
status codes, default names, port 0, and bad requests as 400 JSON, never a crash."""

from __future__ import annotations

import socket
import time

import pytest

from portd.testing import serve
from tests.support import run_portd
from tests.toxiproxy.conftest import ToxiproxyDaemon


def make_proxy(api: ToxiproxyDaemon, upstream: str, name: str = "db") -> dict[str, object]:
    status, proxy = api.request(
        "POST", "/proxies", {"name": name, "listen": "127.0.0.1:0", "upstream": upstream}
    )
    assert status == 201
    assert isinstance(proxy, dict)
    return proxy


def port_of(proxy: dict[str, object]) -> int:
    return int(str(proxy["listen"]).rpartition(":")[2])


def test_creating_a_proxy_answers_201_with_the_real_port(toxiproxy: ToxiproxyDaemon) -> None:
    with serve("echo") as echo:
        proxy = make_proxy(toxiproxy, f"127.0.0.1:{echo.port}")
        assert proxy == {
            "name": "db",
            "listen": f"127.0.0.1:{port_of(proxy)}",
            "upstream": f"127.0.0.1:{echo.port}",
            "enabled": True,
            "toxics": [],
        }
        with socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=5) as client:
            client.sendall(b"through the API's proxy")
            assert client.recv(100) == b"through the API's proxy"
        assert toxiproxy.request("GET", "/proxies") == (200, {"db": proxy})
        assert toxiproxy.request("GET", "/proxies/db") == (200, proxy)


def test_proxy_errors_have_toxiproxys_codes_and_shape(toxiproxy: ToxiproxyDaemon) -> None:
    make_proxy(toxiproxy, "127.0.0.1:9")
    assert toxiproxy.request("POST", "/proxies", {"name": "db", "upstream": "127.0.0.1:9"}) == (
        409, {"error": "proxy already exists", "status": 409},
    )  # fmt: skip
    assert toxiproxy.request("POST", "/proxies", {"upstream": "127.0.0.1:9"}) == (
        400, {"error": "missing required field: name", "status": 400},
    )  # fmt: skip
    assert toxiproxy.request("GET", "/proxies/nope") == (
        404, {"error": "proxy not found", "status": 404},
    )  # fmt: skip
    status, body = toxiproxy.request("POST", "/proxies", b"{not json")
    assert status == 400
    assert body["error"].startswith("bad request body")
    status, body = toxiproxy.request("POST", "/proxies", {"name": "x", "upstream": "*:80"})
    assert (status, body["status"]) == (400, 400)
    assert toxiproxy.request("DELETE", "/proxies/db") == (204, None)
    assert toxiproxy.request("DELETE", "/proxies/db")[0] == 404


def test_toxics_have_default_names_shapes_and_codes(toxiproxy: ToxiproxyDaemon) -> None:
    make_proxy(toxiproxy, "127.0.0.1:9")
    status, toxic = toxiproxy.request(
        "POST", "/proxies/db/toxics", {"type": "latency", "attributes": {"latency": 100}}
    )
    assert (status, toxic) == (200, {
        "name": "latency_downstream", "type": "latency", "stream": "downstream",
        "toxicity": 1.0, "attributes": {"latency": 100, "jitter": 0},
    })  # fmt: skip
    again = toxiproxy.request("POST", "/proxies/db/toxics", {"type": "latency"})
    assert again == (409, {"error": "toxic already exists", "status": 409})
    assert toxiproxy.request("POST", "/proxies/db/toxics", {"type": "nope"}) == (
        400, {"error": "invalid toxic type", "status": 400},
    )  # fmt: skip
    bad_stream = toxiproxy.request("POST", "/proxies/db/toxics", {"type": "latency", "stream": "x"})
    assert bad_stream[0] == 400
    status, updated = toxiproxy.request(
        "PATCH", "/proxies/db/toxics/latency_downstream", {"attributes": {"jitter": 5}}
    )
    assert (status, updated["attributes"]) == (200, {"latency": 100, "jitter": 5})
    assert toxiproxy.request("GET", "/proxies/db/toxics") == (200, [updated])
    assert toxiproxy.request("GET", "/proxies/db/toxics/latency_downstream") == (200, updated)
    assert toxiproxy.request("DELETE", "/proxies/db/toxics/latency_downstream") == (204, None)
    assert toxiproxy.request("GET", "/proxies/db/toxics/latency_downstream")[0] == 404


def test_a_toxic_added_through_the_api_acts_on_a_live_connection(
    toxiproxy: ToxiproxyDaemon,
) -> None:
    with serve("echo") as echo:
        proxy = make_proxy(toxiproxy, f"127.0.0.1:{echo.port}")
        with socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=5) as client:
            client.sendall(b"a")
            assert client.recv(1) == b"a"
            toxiproxy.request("POST", "/proxies/db/toxics",
                              {"type": "latency", "attributes": {"latency": 150}})  # fmt: skip
            started = time.perf_counter()
            client.sendall(b"b")
            assert client.recv(1) == b"b"
            assert time.perf_counter() - started >= 0.148


def test_disabling_refuses_and_enabling_takes_the_same_port(toxiproxy: ToxiproxyDaemon) -> None:
    with serve("echo") as echo:
        proxy = make_proxy(toxiproxy, f"127.0.0.1:{echo.port}")
        port = port_of(proxy)
        status, down = toxiproxy.request("POST", "/proxies/db", {"enabled": False})
        assert (status, down["enabled"]) == (200, False)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        status, up = toxiproxy.request("PATCH", "/proxies/db", {"enabled": True})
        assert (status, up["enabled"], up["listen"]) == (200, True, f"127.0.0.1:{port}")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"up")
            assert client.recv(2) == b"up"


def test_populate_creates_or_keeps_and_reset_clears(toxiproxy: ToxiproxyDaemon) -> None:
    body = [{"name": "a", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"},
            {"name": "b", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}]  # fmt: skip
    status, made = toxiproxy.request("POST", "/populate", body)
    assert status == 201
    assert [proxy["name"] for proxy in made["proxies"]] == ["a", "b"]
    toxiproxy.request("POST", "/proxies/a/toxics", {"type": "timeout"})
    toxiproxy.request("POST", "/proxies/b", {"enabled": False})
    assert toxiproxy.request("POST", "/reset") == (204, None)
    proxies = toxiproxy.request("GET", "/proxies")[1]
    assert [(p["enabled"], p["toxics"]) for p in proxies.values()] == [(True, []), (True, [])]
    bad = toxiproxy.request("POST", "/populate", [{"name": "c"}])
    assert bad == (400, {"error": "missing required field: upstream at proxy 1", "status": 400})


def test_version_and_unknown_paths(toxiproxy: ToxiproxyDaemon) -> None:
    status, body = toxiproxy.request("GET", "/version")
    assert status == 200
    assert body["version"].startswith("2.")
    assert toxiproxy.request("GET", "/nothing/here")[0] == 404
    assert toxiproxy.request("DELETE", "/version")[0] == 405


@pytest.mark.parametrize(
    "garbage",
    [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\n\r\n",
     b"\x00\xff" * 100, b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 70_000 + b"\r\n\r\n"],
)  # fmt: skip
def test_bad_http_is_a_json_error_and_the_api_serves_on(
    toxiproxy: ToxiproxyDaemon, garbage: bytes
) -> None:
    with socket.create_connection((toxiproxy.host, toxiproxy.port), timeout=5) as client:
        client.sendall(garbage)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.split(b" ", 2)[1] in (b"400", b"413", b"431")
    assert b'"status": 4' in answer
    assert toxiproxy.request("GET", "/version")[0] == 200


def test_a_non_loopback_api_address_is_refused_unless_allowed() -> None:
    done = run_portd("toxiproxy", "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 64
    (line,) = done.stderr.splitlines()
    assert "is not loopback" in line
    assert "--allow-remote" in line
