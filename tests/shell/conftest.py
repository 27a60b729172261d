"""The shell tests run real processes (``spawn``)."""

from __future__ import annotations

from tests.processes import spawn

__all__ = ["spawn"]
