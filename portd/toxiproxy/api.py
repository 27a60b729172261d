"""toxiproxy's HTTP API over the registry: its endpoints, JSON shapes and status codes.

==========================================  ===========================================
``GET /proxies``                             every proxy by name, with its toxics
``POST /proxies``                            create (201; 409 when the name exists)
``POST /populate``                           create or replace many (201)
``GET|POST|PATCH|DELETE /proxies/{name}``     show, update (enabled, listen, upstream), delete (204)
``GET|POST /proxies/{name}/toxics``           list, add (200; 409 when the name exists)
``GET|POST|PATCH|DELETE .../toxics/{toxic}``  show, update (attributes, toxicity), remove (204)
``POST /reset``                              every proxy enabled, every toxic removed (204)
``GET /version``                             ``{"version": ...}``
==========================================  ===========================================

Errors are toxiproxy's ``{"error": ..., "status": ...}``: 400 for a body that is not
JSON or has a bad field, 404 for an unknown proxy or toxic, 409 for a taken name, 405
for a method an endpoint does not take. Handlers that must wait (binding is instant
on loopback, but a listener starts on the loop) run as tasks; see :func:`route`.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from portd.errors import OptionError
from portd.toxics.spec import ATTRIBUTES, build_toxic
from portd.toxics.table import ToxicExistsError, ToxicNotFoundError
from portd.toxiproxy.registry import ApiProxy, ProxyError, Registry

VERSION = "2.12.0"  # the toxiproxy API version whose shapes this follows
TARGETING = ("only_new", "nth", "peer")
Answer = tuple[int, Any]


def error(status: int, message: str) -> Answer:
    """toxiproxy's error body."""
    return status, {"error": message, "status": status}


def parse_body(body: bytes, kind: type = dict) -> Any:
    """The request's JSON. Raises ProxyError 400."""
    try:
        value = json.loads(body or b"null")
    except (ValueError, RecursionError) as exc:
        raise ProxyError(400, f"bad request body: {exc}") from None
    if not isinstance(value, kind):
        raise ProxyError(400, f"bad request body: expected a JSON {kind.__name__}")
    return value


def _text(value: dict[str, Any], key: str, default: str = "") -> str:
    found = value.get(key, default)
    if not isinstance(found, str):
        raise ProxyError(400, f"bad request body: {key} must be a string")
    return found


def _flag(value: dict[str, Any], key: str, default: bool) -> bool:
    found = value.get(key, default)
    if not isinstance(found, bool):
        raise ProxyError(400, f"bad request body: {key} must be true or false")
    return found


class Api:
    """Answers one request at a time on the daemon's loop."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def handle(self, method: str, path: str, body: bytes) -> Answer:
        """The status and JSON answer of one request (errors included)."""
        try:
            return await self._dispatch(method, [unquote(p) for p in path.strip("/").split("/")],
                                        body)  # fmt: skip
        except ProxyError as exc:
            return error(exc.status, str(exc))

    async def _dispatch(self, method: str, parts: list[str], body: bytes) -> Answer:  # noqa: PLR0911 - one return per route
        match parts:
            case ["version"]:
                return self._only(method, "GET") or (200, {"version": VERSION})
            case ["reset"]:
                return self._only(method, "POST") or await self.reset()
            case ["populate"]:
                return self._only(method, "POST") or await self.populate(body)
            case ["proxies"]:
                if method == "GET":
                    return 200, {n: p.as_json() for n, p in self.registry.all().items()}
                return self._only(method, "POST") or await self.create(parse_body(body))
            case ["proxies", name]:
                return await self.proxy(method, self.registry.get(name), body)
            case ["proxies", name, "toxics"]:
                proxy = self.registry.get(name)
                if method == "GET":
                    return 200, [toxic.as_json() for toxic in proxy.handler.table.toxics]
                return self._only(method, "POST") or self.add_toxic(proxy, parse_body(body))
            case ["proxies", name, "toxics", toxic]:
                return self.toxic(method, self.registry.get(name), toxic, body)
        return error(404, "not found")

    @staticmethod
    def _only(method: str, allowed: str) -> Answer | None:
        return None if method == allowed else error(405, f"method {method} not allowed")

    async def create(self, value: dict[str, Any]) -> Answer:
        name, upstream = _text(value, "name"), _text(value, "upstream")
        if not name:
            raise ProxyError(400, "missing required field: name")
        if not upstream:
            raise ProxyError(400, "missing required field: upstream")
        listen = _text(value, "listen", "127.0.0.1:0") or "127.0.0.1:0"
        proxy = await self.registry.create(name, listen, upstream, _flag(value, "enabled", True))
        return 201, proxy.as_json()

    async def populate(self, body: bytes) -> Answer:
        items = parse_body(body, list)
        made: list[ApiProxy] = []
        for index, value in enumerate(items, start=1):
            if not isinstance(value, dict):
                raise ProxyError(400, f"bad request body: proxy {index} is not an object")
            for key in ("name", "upstream"):
                if not _text(value, key):
                    raise ProxyError(400, f"missing required field: {key} at proxy {index}")
        for value in items:
            made.append(await self._create_or_replace(value))
        return 201, {"proxies": [proxy.as_json() for proxy in made]}

    async def _create_or_replace(self, value: dict[str, Any]) -> ApiProxy:
        name, upstream = _text(value, "name"), _text(value, "upstream")
        listen = _text(value, "listen", "127.0.0.1:0") or "127.0.0.1:0"
        enabled = _flag(value, "enabled", True)
        old = self.registry.all().get(name)
        if old is not None and (old.listen_text, old.upstream) == (listen, upstream):
            return old  # type: ignore[return-value]
        if old is not None:
            self.registry.remove(name)
        return await self.registry.create(name, listen, upstream, enabled)

    async def proxy(self, method: str, proxy: Any, body: bytes) -> Answer:
        if method == "GET":
            return 200, proxy.as_json()
        if method == "DELETE":
            self.registry.remove(proxy.name)
            return 204, None
        if method not in ("POST", "PATCH"):
            return error(405, f"method {method} not allowed")
        value = parse_body(body)
        await self.registry.update(
            proxy, _text(value, "listen", proxy.listen_text) or proxy.listen_text,
            _text(value, "upstream", proxy.upstream) or proxy.upstream,
            _flag(value, "enabled", proxy.enabled),
        )  # fmt: skip
        return 200, proxy.as_json()

    def add_toxic(self, proxy: Any, value: dict[str, Any]) -> Answer:
        kind = value.get("type")
        if not isinstance(kind, str) or kind not in ATTRIBUTES:
            raise ProxyError(400, "invalid toxic type")
        stream = value.get("stream", "downstream")
        if stream not in ("upstream", "downstream"):
            raise ProxyError(400, "stream was invalid, can be either upstream or downstream")
        toxic = self._build(kind, value, value.get("attributes") or {}, proxy)
        try:
            proxy.handler.table.add(toxic)
        except ToxicExistsError:
            raise ProxyError(409, "toxic already exists") from None
        return 200, toxic.as_json()

    def toxic(self, method: str, proxy: Any, name: str, body: bytes) -> Answer:
        table = proxy.handler.table
        try:
            old = table.get(name)
        except ToxicNotFoundError:
            raise ProxyError(404, "toxic not found") from None
        if method == "GET":
            return 200, old.as_json()
        if method == "DELETE":
            table.remove(name)
            return 204, None
        if method not in ("POST", "PATCH"):
            return error(405, f"method {method} not allowed")
        value = parse_body(body)
        attributes = {**old.as_json()["attributes"], **(value.get("attributes") or {})}
        common = {"name": name, "stream": old.stream,
                  "toxicity": value.get("toxicity", old.toxicity)}  # fmt: skip
        return 200, table.update(self._build(old.type, common, attributes, proxy)).as_json()

    @staticmethod
    def _build(kind: str, common: dict[str, Any], attributes: Any, proxy: Any) -> Any:
        if not isinstance(attributes, dict):
            raise ProxyError(400, "bad request body: attributes must be an object")
        attributes = dict(attributes)
        targeting = {key: attributes.pop(key) for key in TARGETING if key in attributes}
        try:
            return build_toxic(kind, common, attributes, targeting, proxy.config.protocol)
        except OptionError as exc:
            raise ProxyError(400, f"bad request body: {exc}") from None

    async def reset(self) -> Answer:
        for proxy in self.registry.all().values():
            await proxy.start()
            proxy.handler.table.clear()
        return 204, None
