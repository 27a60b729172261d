"""The daemon's numbers when workers serve: what each reports, added up, and what
workers that exited reported last (so counters only grow); ``portd status`` and
/metrics read them through the parent."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from portd.listeners.stats import add_stats, fold_into, group_by_name

if TYPE_CHECKING:
    from portd.supervisor import Supervisor
    from portd.workers.pool import Worker


class DaemonNumbers:
    """Adds up the workers' reports; keeps the last ones of the workers that exited."""

    def __init__(self) -> None:
        self.exited_totals: dict[str, dict[str, Any]] = {}  # by listener name
        self.exited_cpu_s = 0.0

    def worker_exited(self, worker: Worker) -> None:
        """Keep what ``worker`` reported last (at exit, else in its last answer)."""
        numbers = worker.last_numbers()
        if numbers is None:
            return
        for entry in (*numbers.get("listeners", ()), *numbers.get("retiring", ())):
            fold_into(self.exited_totals, entry)
        self.exited_cpu_s += numbers.get("process", {}).get("cpu_s", 0.0)

    async def ask(self, workers: Sequence[Worker], op: str) -> list[dict[str, Any]]:
        """Every serving worker's answer to ``op`` (one that does not answer is left out)."""
        asked = [w for w in workers if w.state in ("ready", "stopping")]
        replies = await asyncio.gather(*(w.ask(op) for w in asked), return_exceptions=True)
        return [reply for reply in replies if isinstance(reply, dict)]

    def add_up(
        self,
        supervisor: Supervisor,
        replies: list[dict[str, Any]],
        workers: Sequence[Worker],
        restarts: int,
        metrics: bool,
    ) -> dict[str, Any]:
        """The snapshot ``portd status`` (or, with ``metrics``, /metrics) shows: each of
        the parent's listeners with every worker's numbers for it, and those of the
        exited ones; listeners only old workers still serve are ``retiring``."""
        entries = [e for reply in replies for e in (*reply["listeners"], *reply["retiring"])]
        groups = group_by_name(entries)
        exited = dict(self.exited_totals)
        listeners = []
        for listener in supervisor.listeners:  # the parent's: addresses, origin
            parts = [listener.stats(), *groups.pop(listener.name, [])]
            if listener.name in exited:
                parts.append(exited.pop(listener.name))
            listeners.append(add_stats(parts))
        retiring = [add_stats(parts) for parts in groups.values()]
        snapshot = {**supervisor.snapshot(), "listeners": listeners, "retiring": retiring,
                    "workers": [w.describe() for w in workers],
                    "worker_restarts": restarts}  # fmt: skip
        if metrics:
            from portd.metrics.process import add_processes, process_numbers

            snapshot["listeners"] = listeners + retiring + list(exited.values())
            snapshot["retiring"] = []
            parts = [process_numbers(), *(r["process"] for r in replies if "process" in r)]
            snapshot["process"] = add_processes([*parts, {"cpu_s": self.exited_cpu_s}])
        return snapshot
