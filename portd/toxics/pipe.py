"""One direction of a forwarded connection with toxics: source -> stages -> sink.

A pipe exists only while toxics apply to its direction (the untoxic path is a plain
``write`` in the forward handler). It links the stages of its toxics in the order they
were added, and keeps memory bounded: above HIGH_WATER_BYTES held in its stages it
pauses its source, below LOW_WATER_BYTES it resumes it. :meth:`set_toxics` changes the
chain between two chunks: a stage taken out first gives back what it held to the
stage after it, downstream first, so bytes keep their order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from portd.toxics.spec import Toxic
from portd.toxics.stages import Ends, Item, Stage, make_stage

HIGH_WATER_BYTES = 256 * 1024
LOW_WATER_BYTES = 64 * 1024


class Pipe:
    """The stages of one direction, between a source that can pause and a sink."""

    def __init__(
        self,
        ends: Ends,
        sink: Callable[[Item], None],
        pause_source: Callable[[bool], None],
    ) -> None:
        """Args:
        sink: takes the items that leave the last stage (bytes, EOF, CLOSE).
        pause_source: called with True to stop reading the source, False to go on.
        """
        self.ends = ends
        self.sink = sink
        self.pause_source = pause_source
        self.stages: list[Stage] = []
        self.paused = False

    @property
    def toxics(self) -> list[Toxic]:
        """The toxics in force, in chain order."""
        return [stage.toxic for stage in self.stages]

    @property
    def held_bytes(self) -> int:
        """Bytes waiting in the stages."""
        return sum(stage.held_bytes for stage in self.stages)

    def push(self, item: Item) -> None:
        """An item from the source."""
        if self.stages:
            self.stages[0].push(item)
            if not self.paused and self.held_bytes > HIGH_WATER_BYTES:
                self.paused = True
                self.pause_source(True)
        else:
            self.sink(item)

    def released(self) -> None:
        """A stage let bytes go; resume the source once little is held."""
        if self.paused and self.held_bytes <= LOW_WATER_BYTES:
            self.paused = False
            self.pause_source(False)

    def set_toxics(self, toxics: Sequence[Toxic]) -> None:
        """Make the chain the stages of ``toxics`` (same objects keep their stage)."""
        wanted = {id(toxic) for toxic in toxics}
        for index in range(len(self.stages) - 1, -1, -1):  # downstream first: order kept
            stage = self.stages[index]
            if id(stage.toxic) not in wanted:
                held = stage.detach()
                del self.stages[index]
                self._link()
                successor = self.stages[index].push if index < len(self.stages) else self.sink
                for item in held:
                    successor(item)
        kept = {id(stage.toxic): stage for stage in self.stages}
        fresh: list[Stage] = []
        chain: list[Stage] = []
        for toxic in toxics:
            found = kept.get(id(toxic)) or make_stage(toxic, self.ends)
            if found is None:
                continue
            stage = found
            if id(toxic) not in kept:
                fresh.append(stage)
            chain.append(stage)
        self.stages = chain
        self._link()
        for stage in fresh:
            stage.start()
        self.released()

    def _link(self) -> None:
        for stage, after in zip(self.stages, self.stages[1:], strict=False):
            stage.out = after.push
        if self.stages:
            self.stages[-1].out = self.sink

    def close(self) -> None:
        """The connection is gone: stop every timer, drop what is held."""
        for stage in self.stages:
            stage.detach()
        self.stages = []
