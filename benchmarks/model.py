"""The shapes shared by the runner: a benchmark, its settings, samples and targets."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class BenchmarkError(Exception):
    """One sample could not be taken; the message says why."""


@dataclass(frozen=True, slots=True)
class Settings:
    """How long and how hard to run; where to put config files."""

    duration_s: float
    warmup_s: float
    workdir: Path


@dataclass(frozen=True, slots=True)
class Sample:
    """One measurement of one server: the value and what helps read it."""

    value: float
    details: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Comparison:
    """numerator/denominator of the medians, and the ratio it must reach (if any)."""

    numerator: str
    denominator: str
    target: float | None = None


@dataclass(frozen=True, slots=True)
class Limit:
    """An absolute bound on one server's median (an upper bound when lower is better)."""

    server: str
    target: float


Measure = Callable[[str], Sample]
Session = Callable[[Settings], contextlib.AbstractContextManager[Measure]]


@dataclass(frozen=True, slots=True)
class Benchmark:
    """One benchmark as run.py sees it."""

    name: str
    title: str
    unit: str
    higher_is_better: bool
    servers: tuple[str, ...]
    session: Session
    comparisons: tuple[Comparison, ...] = ()
    limits: tuple[Limit, ...] = ()
    notes: tuple[str, ...] = ()
