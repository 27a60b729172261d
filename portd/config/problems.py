"""Collecting config problems: one line each, naming file, table, key, value and rule."""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from typing import Any

from portd.errors import ConfigError, OptionError
from portd.options import Option, defaults


class Problems:
    """Collects one-line problems, each prefixed with the file name."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, where: str, message: str, key: str | None = None, value: Any = None) -> None:
        """One problem in table ``where`` (with the offending ``key = value`` if any)."""
        setting = f" {key} = {toml_repr(value)}:" if key is not None else ""
        self.lines.append(f"{self.source}: {where}:{setting} {message}")

    def raise_if_any(self) -> None:
        """Raise every problem found so far at once.

        Raises:
            ConfigError: at least one problem was added.
        """
        if self.lines:
            raise ConfigError(self.lines)


def toml_repr(value: Any) -> str:
    """A value as it would appear in the file (escaped: always one line)."""
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, list):
        return "[...]"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # TOML spells inf, -inf and nan as Python does; JSON has no spelling
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


def check_options(
    table: Mapping[str, Any], options: tuple[Option, ...], where: str, problems: Problems
) -> dict[str, Any]:
    """Every option's checked value (or default); unknown keys and bad values are problems."""
    known = {option.name: option for option in options}
    values = defaults(options)
    for name in (option.name for option in options if option.required and option.name not in table):
        problems.add(where, f"missing required key {name!r} ({known[name].help})")
    for key, value in table.items():
        option = known.get(key)
        if option is None:
            allowed = ", ".join(sorted(known))
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.add(where, f"unknown key; {hint}allowed keys: {allowed}", key, value)
            continue
        try:
            values[key] = option.check(value)
        except OptionError as exc:
            problems.add(where, str(exc), key, value)
    return values
