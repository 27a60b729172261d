"""The example config shipped with portd (``portd example-config``): inside the wheel as
``portd/config.example.toml``, read in place from a source checkout."""

from __future__ import annotations

from pathlib import Path

NAME = "config.example.toml"


def example_config_path() -> Path:
    """Where the example config is: inside the installed package, or at the checkout's top."""
    here = Path(__file__).resolve().parent
    packaged = here / NAME
    return packaged if packaged.is_file() else here.parent / NAME


def example_config() -> str:
    """The example config's text: every option, serving loopback high ports only."""
    return example_config_path().read_text(encoding="utf-8")
