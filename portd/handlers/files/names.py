"""Final file names for file-receive: a template of known fields rendered to one safe name.

A rendered name is always one directory entry: only ``A-Z a-z 0-9 . _ - + = , @``,
never empty, never starting with a dot (so never ``.``, ``..``, a hidden file or a
``.portd-partial-*`` temporary), no ``..`` anywhere, and at most MAX_NAME_CHARS long
(room is left for a ``-N`` suffix within the 255-byte limit of Linux file systems).
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Mapping
from dataclasses import dataclass

from portd.errors import OptionError

FIELDS = {
    "utc": "UTC time of the accept, 20261121T222139.123456Z",
    "peer": "the sender's address and port, 127.0.0.1-50000 or --1-50000 for [::1]:50000",
    "host": "the sender's address, 127.0.0.1 or --1",
    "port": "the sender's port",
    "conn_id": "the daemon's connection id (also in every log line)",
    "listener": "the listener's name",
}
DEFAULT_TEMPLATE = "{utc}_{peer}_{conn_id}"
SAFE_CHARACTERS = frozenset(string.ascii_letters + string.digits + "._-+=,@")
MAX_NAME_CHARS = 200
TEMPLATE_RULE = (
    "expected literal text from A-Z a-z 0-9 . _ - + = , @ (not starting with a dot, "
    "no '..') and fields " + " ".join(f"{{{name}}}" for name in FIELDS)
)
_FIELD = re.compile(r"\{([^{}]*)\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,@-]")
_DOTS = re.compile(r"\.{2,}")


@dataclass(frozen=True, slots=True)
class NameTemplate:
    """A checked template: literal text and field names, alternating."""

    text: str
    literals: tuple[str, ...]
    fields: tuple[str, ...]

    def render(self, values: Mapping[str, str]) -> str:
        """The safe name for ``values`` (one per field); see :func:`safe_name`."""
        parts = [self.literals[0]]
        for field_name, literal in zip(self.fields, self.literals[1:], strict=True):
            parts += [values[field_name], literal]
        return safe_name("".join(parts))


def parse_template(text: str) -> NameTemplate:
    """Check a ``name`` template; usable as an Option's ``convert``.

    Raises:
        OptionError: an unknown field, a format spec or conversion, a stray brace, or
            literal text that would not stay one safe name.
    """
    literals = _FIELD.split(text)[0::2]
    fields = tuple(_FIELD.findall(text))
    for name in fields:
        if name not in FIELDS:
            raise OptionError(f"unknown field {{{name}}}; {TEMPLATE_RULE}")
    literal = "".join(literals)
    bad = any(c not in SAFE_CHARACTERS for c in literal) or any(".." in x for x in literals)
    if bad or not text or text.startswith("."):
        raise OptionError(TEMPLATE_RULE)
    return NameTemplate(text, tuple(literals), fields)


def safe_name(text: str) -> str:
    """``text`` made into one safe directory entry (the rules in this module's docstring).

    Unsafe characters become ``_``, except that IPv6 colons become ``-`` and brackets
    go; runs of dots become ``_``; a leading dot or an empty result gets a ``_``.
    """
    text = text.replace(":", "-").replace("[", "").replace("]", "")
    text = _DOTS.sub("_", _UNSAFE.sub("_", text))
    if not text or text.startswith("."):
        text = "_" + text
    return text[:MAX_NAME_CHARS]


def name_fields(peer: str, conn_id: int, listener: str, accepted: float) -> dict[str, str]:
    """Every template field for one connection.

    Args:
        peer: ``host:port`` or ``[v6host]:port`` as the server formats it.
        conn_id: the connection id.
        listener: the listener's name.
        accepted: the accept time, seconds since the epoch.
    """
    host, _, port = peer.rpartition(":")
    whole = int(accepted)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(whole))
    micros = int((accepted - whole) * 1_000_000)
    return {
        "utc": f"{stamp}.{micros:06d}Z",
        "peer": f"{host}-{port}" if host else peer,
        "host": host,
        "port": port,
        "conn_id": str(conn_id),
        "listener": listener,
    }
