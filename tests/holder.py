"""A process that holds sockets for a test: ``python holder.py STEPS_JSON``.

Each step is a dict run in order; sockets are kept under their ``name``:

- ``{"op": "bind", "proto": "tcp"|"udp"|"unix"|"unix-dgram", "host": H, "port": P,
  "listen": true, "backlog": 128, "reuseport": false, "v6only": true, "name": N}``
  (``host`` is the path for unix sockets)
- ``{"op": "connect", "proto": "tcp"|"udp", "host": H, "port": P, "name": N}``
- ``{"op": "accept", "name": LISTENER, "as": N}``
- ``{"op": "close", "name": N}``

It prints ``ready`` on stderr once every step has run, then holds everything until stdin ends.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any

KINDS = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM, "unix": socket.SOCK_STREAM,
         "unix-dgram": socket.SOCK_DGRAM}  # fmt: skip


def bind(step: dict[str, Any]) -> socket.socket:
    proto = step.get("proto", "tcp")
    if proto.startswith("unix"):
        sock = socket.socket(socket.AF_UNIX, KINDS[proto])
        sock.bind(step["host"])
    else:
        family = socket.AF_INET6 if ":" in step["host"] else socket.AF_INET
        sock = socket.socket(family, KINDS[proto])
        if step.get("reuseport"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            v6only = 1 if step.get("v6only", True) else 0
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        sock.bind((step["host"], step["port"]))
    if step.get("listen", True) and sock.type == socket.SOCK_STREAM:
        sock.listen(step.get("backlog", 128))
    return sock


def connect(step: dict[str, Any]) -> socket.socket:
    kind = KINDS[step.get("proto", "tcp")]
    family = socket.AF_INET6 if ":" in step["host"] else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.settimeout(10)
    sock.connect((step["host"], step["port"]))
    return sock


def main() -> None:
    held: dict[str, socket.socket] = {}
    for number, step in enumerate(json.loads(sys.argv[1])):
        name = step.get("name", str(number))
        if step["op"] == "bind":
            held[name] = bind(step)
        elif step["op"] == "connect":
            held[name] = connect(step)
        elif step["op"] == "accept":
            held[step["as"]] = held[name].accept()[0]
        elif step["op"] == "close":
            held.pop(name).close()
    print("ready", file=sys.stderr, flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
