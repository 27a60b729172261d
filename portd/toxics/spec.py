"""What a toxic is, as config, the CLI, the HTTP API and the testing API write it.

Names and attributes follow toxiproxy, so its documentation and clients carry over:
``latency`` (``latency``, ``jitter`` ms), ``bandwidth`` (``rate`` KB/s, KB = 1000
bytes), ``slow_close`` (``delay`` ms), ``timeout`` (``timeout`` ms), ``reset_peer``
(``timeout`` ms), ``slicer`` (``average_size``, ``size_variation`` bytes, ``delay``
us), ``limit_data`` (``bytes``). portd adds ``slow_open`` (``delay`` ms before the
upstream connect), ``cut_after`` (``after_s`` or ``after_bytes``: an RST mid-stream)
and ``packet_loss`` for UDP (``loss`` 0-1, ``burst`` the mean burst length).

Every toxic has ``name`` (default ``<type>_<stream>``), ``stream`` (``upstream``:
client to server, or ``downstream``, the default), ``toxicity`` (the probability that
a connection gets it, drawn once per connection) and optional targeting: ``only_new``
(connections opened after the toxic was added), ``nth`` (only the Nth connection the
listener accepts, 1-based) and ``peer`` (only clients from that address).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from portd.errors import OptionError

STREAMS = ("upstream", "downstream")
NUMBER = (int, float)
# type -> {attribute: (default, minimum, maximum, integer?)}
ATTRIBUTES: dict[str, dict[str, tuple[float, float, float, bool]]] = {
    "latency": {"latency": (0, 0, 3_600_000, False), "jitter": (0, 0, 3_600_000, False)},
    "bandwidth": {"rate": (0, 0, 10**9, False)},
    "slow_close": {"delay": (0, 0, 3_600_000, False)},
    "timeout": {"timeout": (0, 0, 3_600_000, False)},
    "reset_peer": {"timeout": (0, 0, 3_600_000, False)},
    "slicer": {
        "average_size": (0, 0, 1 << 24, True),
        "size_variation": (0, 0, 1 << 24, True),
        "delay": (0, 0, 3_600_000_000, False),
    },
    "limit_data": {"bytes": (0, 0, 1 << 62, True)},
    "slow_open": {"delay": (0, 0, 3_600_000, False)},
    "cut_after": {"after_s": (0, 0, 86_400, False), "after_bytes": (0, 0, 1 << 62, True)},
    "packet_loss": {"loss": (0, 0, 1, False), "burst": (1, 1, 1_000_000, False)},
}
TOXIC_TYPES = tuple(ATTRIBUTES)
STREAM_TYPES = tuple(t for t in TOXIC_TYPES if t != "packet_loss")  # TCP and unix streams
DATAGRAM_TYPES = ("latency", "packet_loss")  # what a UDP forward applies
TARGETING = ("only_new", "nth", "peer")
COMMON = ("type", "name", "stream", "toxicity")
MAX_NAME = 200


@dataclass(frozen=True, slots=True)
class Toxic:
    """One validated toxic. Immutable: a change is a new Toxic with the same name."""

    type: str
    name: str
    stream: str = "downstream"
    toxicity: float = 1.0
    attributes: Mapping[str, float] = field(default_factory=dict)
    only_new: bool = False
    nth: int = 0  # 0: every connection
    peer: str = ""  # "": every client

    def __getitem__(self, attribute: str) -> float:
        return self.attributes[attribute]

    @property
    def upstream(self) -> bool:
        """True when it acts on bytes from the client to the server."""
        return self.stream == "upstream"

    def as_json(self) -> dict[str, Any]:
        """toxiproxy's JSON shape; targeting keys, when set, ride in ``attributes``."""
        attributes: dict[str, Any] = {key: _plain(value) for key, value in self.attributes.items()}
        if self.only_new:
            attributes["only_new"] = True
        if self.nth:
            attributes["nth"] = self.nth
        if self.peer:
            attributes["peer"] = self.peer
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": attributes,
        }


def protocol_problem(toxic: Toxic, protocol: str) -> str | None:
    """Why a listener of ``protocol`` cannot apply ``toxic``, or None."""
    usable = DATAGRAM_TYPES if protocol == "udp" else STREAM_TYPES
    if toxic.type in usable:
        return None
    return f"toxic {toxic.name!r}: a {protocol} forward takes {', '.join(usable)}"


def _plain(value: float) -> float:
    return int(value) if float(value).is_integer() else value


def parse_toxic(table: Mapping[str, Any], protocol: str = "") -> Toxic:
    """A Toxic from flat keys (config, CLI): ``type``, ``name``, ``stream``, ``toxicity``,
    the type's attributes and the targeting keys, all at one level.

    Raises:
        OptionError: one line naming the key and what it accepts.
    """
    kind = table.get("type")
    if not isinstance(kind, str) or kind not in ATTRIBUTES:
        raise OptionError(f"type = {kind!r}: expected one of {', '.join(TOXIC_TYPES)}")
    allowed = (*COMMON, *ATTRIBUTES[kind], *TARGETING)
    for key in table:
        if key not in allowed:
            raise OptionError(f"{key!r} is not a {kind} key; expected {', '.join(allowed)}")
    attributes = {key: table[key] for key in ATTRIBUTES[kind] if key in table}
    targeting = {key: table[key] for key in TARGETING if key in table}
    return build_toxic(kind, table, attributes, targeting, protocol)


def build_toxic(
    kind: str,
    common: Mapping[str, Any],
    attributes: Mapping[str, Any],
    targeting: Mapping[str, Any],
    protocol: str = "",
) -> Toxic:
    """A checked Toxic from its parts (the API passes ``attributes`` as toxiproxy nests
    them).

    Raises:
        OptionError: a bad value, an unknown attribute, a type ``protocol`` (tcp or udp;
            "" for either) cannot take.
    """
    if kind not in ATTRIBUTES:
        raise OptionError(f"type = {kind!r}: expected one of {', '.join(TOXIC_TYPES)}")
    usable = DATAGRAM_TYPES if protocol == "udp" else STREAM_TYPES
    if protocol and kind not in usable:
        raise OptionError(f"type = {kind!r}: a {protocol} forward takes {', '.join(usable)}")
    stream = common.get("stream", "downstream")
    if stream not in STREAMS:
        raise OptionError(f"stream = {stream!r}: expected 'upstream' or 'downstream'")
    name = common.get("name") or f"{kind}_{stream}"
    if not isinstance(name, str) or len(name) > MAX_NAME or not name.isprintable():
        raise OptionError(f"name = {name!r}: expected printable text of 1-{MAX_NAME} characters")
    toxicity = _number("toxicity", common.get("toxicity", 1.0), 0, 1)
    checked = _attributes(kind, attributes)
    if kind == "cut_after" and not (checked["after_s"] or checked["after_bytes"]):
        raise OptionError("cut_after needs after_s or after_bytes above 0")
    only_new, nth, peer = _targeting(targeting)
    return Toxic(kind, name, stream, toxicity, checked, only_new, nth, peer)


def _attributes(kind: str, given: Mapping[str, Any]) -> dict[str, float]:
    rules = ATTRIBUTES[kind]
    for key in given:
        if key not in rules:
            raise OptionError(f"{key!r} is not a {kind} attribute; expected {', '.join(rules)}")
    checked: dict[str, float] = {}
    for key, (default, low, high, integer) in rules.items():
        value = _number(key, given.get(key, default), low, high)
        if integer and not float(value).is_integer():
            raise OptionError(f"{key} = {value!r}: expected a whole number")
        checked[key] = int(value) if integer else value
    return checked


def _targeting(given: Mapping[str, Any]) -> tuple[bool, int, str]:
    only_new = given.get("only_new", False)
    if not isinstance(only_new, bool):
        raise OptionError(f"only_new = {only_new!r}: expected true or false")
    nth = _number("nth", given.get("nth", 0), 0, 1 << 62)
    if not float(nth).is_integer():
        raise OptionError(f"nth = {nth!r}: expected a whole number")
    peer = given.get("peer", "")
    if not isinstance(peer, str) or len(peer) > MAX_NAME or not peer.isprintable():
        raise OptionError(f"peer = {peer!r}: expected a client address such as '127.0.0.2'")
    return only_new, int(nth), peer


def _number(key: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, NUMBER):
        raise OptionError(f"{key} = {value!r}: expected a number from {low:g} to {high:g}")
    if math.isnan(value) or not low <= value <= high:
        raise OptionError(f"{key} = {value!r}: expected a number from {low:g} to {high:g}")
    return value


def parse_toxic_text(text: str, protocol: str = "") -> Toxic:
    """``TYPE:KEY=VALUE,...`` (the CLI's ``--toxic latency:latency=100,jitter=10``).

    Raises:
        OptionError: the text does not fit, or a value is bad.
    """
    kind, _, rest = text.partition(":")
    table: dict[str, Any] = {"type": kind.strip()}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OptionError(f"{item!r}: expected KEY=VALUE")
        table[key.strip()] = _scalar(value.strip())
    return parse_toxic(table, protocol)


def _scalar(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text) if text.lstrip("-").isdigit() and len(text) < 20 else float(text)
    except ValueError:
        return text
