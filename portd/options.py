"""Declared options: what a listener or handler accepts, with checks that say what is allowed.

The config loader, ``portd listen --set`` and test fixtures all validate through here,
so a bad value reads the same wherever it came from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from portd.errors import OptionError

Settings = Mapping[str, Any]

_KIND_NAMES: dict[type, str] = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
}


@dataclass(frozen=True, slots=True)
class Option:
    """One option: its name, type, default and allowed range or choices.

    ``convert`` turns an accepted raw value into the stored one (a size such as "1GiB"
    into bytes) and raises OptionError when it cannot. A ``required`` option has no
    usable default: a table without it is a config error.
    """

    name: str
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    convert: Callable[[Any], Any] | None = field(default=None, compare=False)
    required: bool = False  # reported at load when missing, like bind and handler

    @property
    def allowed(self) -> str:
        """What the option accepts, as a phrase for error messages."""
        if self.choices:
            return "one of " + ", ".join(repr(choice) for choice in self.choices)
        text = _KIND_NAMES.get(self.kind, self.kind.__name__)
        if self.minimum is not None and self.maximum is not None:
            return f"{text} from {_number(self.minimum)} to {_number(self.maximum)}"
        if self.minimum is not None:
            return f"{text} >= {_number(self.minimum)}"
        return text

    def check(self, value: Any) -> Any:
        """Validate ``value`` and return what to store.

        Raises:
            OptionError: the value has the wrong type, range or choice.
        """
        if not _has_kind(value, self.kind):
            raise OptionError(f"expected {self.allowed}")
        if self.choices and value not in self.choices:
            raise OptionError(f"expected {self.allowed}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            too_low = self.minimum is not None and value < self.minimum
            too_high = self.maximum is not None and value > self.maximum
            # TOML's nan compares false with every bound, so it would pass the range check.
            if too_low or too_high or math.isnan(value):
                raise OptionError(f"expected {self.allowed}")
        return self.convert(value) if self.convert else value


def _has_kind(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


SIZE_UNITS = {
    "B": 1,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
}  # fmt: skip
_SIZE_PATTERN = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?) ?(?P<unit>[KMGT]i?B|B)?")
MAX_SIZE_DIGITS = 30  # more than any disk holds; int() would refuse 4,300 and more
SIZE_RULE = (
    'expected a byte count: an integer >= 0, or a string such as "500MB" or "1GiB" '
    "(B; KB MB GB TB = 1000^n; KiB MiB GiB TiB = 1024^n)"
)


def parse_size(value: Any) -> int:
    """A size in bytes from an integer or a string such as ``"1GiB"`` or ``"1.5 MB"``.

    Decimal units (KB, MB, GB, TB) are powers of 1000, binary ones (KiB ... TiB) powers
    of 1024; a bare number is bytes, and a fraction of a byte is dropped. Use it as an
    Option's ``convert`` with ``kind=object``, since it accepts two types.

    Raises:
        OptionError: anything else (booleans, floats, negative numbers, unknown units),
            saying what is allowed.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE_PATTERN.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or len(match["number"]) > MAX_SIZE_DIGITS:
        raise OptionError(SIZE_RULE)
    multiplier = SIZE_UNITS[match["unit"] or "B"]
    whole, _, fraction = match["number"].partition(".")
    scale: int = 10 ** len(fraction)
    return (int(whole + fraction) * multiplier) // scale


def defaults(options: Iterable[Option]) -> dict[str, Any]:
    """The default value of every option, by name."""
    return {option.name: option.default for option in options}
