"""Toxics: faults on a forwarded connection, added, changed and removed while it runs.

* ``spec``: what a toxic is (toxiproxy's names and attributes, plus portd's own), and
  its parsing from config tables, ``--toxic`` text and the HTTP API's JSON;
* ``stages``: each toxic as a stage of one direction, driven by loop callbacks;
* ``pipe``: one direction's chain of stages, its flow control and live changes;
* ``table``: the live toxics of one forward and which connections get each.
"""

from __future__ import annotations

from portd.toxics.spec import Toxic, parse_toxic, parse_toxic_text
from portd.toxics.table import ToxicExistsError, ToxicNotFoundError, ToxicTable

__all__ = [
    "Toxic",
    "ToxicExistsError",
    "ToxicNotFoundError",
    "ToxicTable",
    "parse_toxic",
    "parse_toxic_text",
]
