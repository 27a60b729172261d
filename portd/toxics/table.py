"""The live toxics of one forward, and which of them each connection gets.

A :class:`ToxicTable` is changed on the event loop's thread only (the HTTP API runs
there; the testing API and reloads hand their changes over to it). Every change is
pushed at once to each live connection that subscribed, which rebuilds its pipes
between two chunks: no lock, no wait on the data path, so the control path cannot hang
behind a busy connection.

Whether a connection gets a toxic is decided once per connection and toxic name
(:class:`Targeting`): the ``toxicity`` draw, ``only_new`` (opened after the toxic was
added), ``nth`` (the Nth connection of the forward) and ``peer`` (the client's address).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol

from portd.toxics.spec import Toxic


class Subscriber(Protocol):
    """A live connection that applies the table's toxics."""

    def toxics_changed(self) -> None:
        """The table changed: apply what now holds."""


class ToxicExistsError(KeyError):
    """A toxic of that name is already there (toxiproxy: 409)."""


class ToxicNotFoundError(KeyError):
    """No toxic has that name (toxiproxy: 404)."""


class ToxicTable:
    """An ordered set of toxics by name, with a change counter and subscribers."""

    def __init__(self, toxics: Iterable[Toxic] = ()) -> None:
        self._toxics: dict[str, tuple[Toxic, int]] = {}
        self.opened = 0  # connections that have subscribed so far (for nth, only_new)
        self.subscribers: set[Subscriber] = set()
        self.applied: Counter[str] = Counter()  # connections each toxic was applied to
        for toxic in toxics:
            self.add(toxic, notify=False)

    def __len__(self) -> int:
        return len(self._toxics)

    @property
    def toxics(self) -> list[Toxic]:
        """In the order they were added."""
        return [toxic for toxic, _ in self._toxics.values()]

    def get(self, name: str) -> Toxic:
        """The toxic called ``name``.

        Raises:
            ToxicNotFoundError: none.
        """
        try:
            return self._toxics[name][0]
        except KeyError:
            raise ToxicNotFoundError(name) from None

    def added_after(self, name: str) -> int:
        """How many connections had opened when ``name`` was added."""
        return self._toxics[name][1]

    def add(self, toxic: Toxic, *, notify: bool = True) -> Toxic:
        """Add ``toxic`` at the end of the chain.

        Raises:
            ToxicExistsError: its name is taken.
        """
        if toxic.name in self._toxics:
            raise ToxicExistsError(toxic.name)
        self._toxics[toxic.name] = (toxic, self.opened)
        if notify:
            self.notify()
        return toxic

    def update(self, toxic: Toxic) -> Toxic:
        """Replace the toxic of the same name, keeping its place in the chain.

        Raises:
            ToxicNotFoundError: no toxic has that name.
        """
        if toxic.name not in self._toxics:
            raise ToxicNotFoundError(toxic.name)
        self._toxics[toxic.name] = (toxic, self._toxics[toxic.name][1])
        self.notify()
        return toxic

    def remove(self, name: str) -> None:
        """Take the toxic out.

        Raises:
            ToxicNotFoundError: no toxic has that name.
        """
        if self._toxics.pop(name, None) is None:
            raise ToxicNotFoundError(name)
        self.notify()

    def replace_all(self, toxics: Iterable[Toxic]) -> None:
        """Make the table exactly ``toxics`` (a reload); unchanged toxics stay as they are,
        so live connections keep their stages (and the bytes those hold)."""
        old = self._toxics
        self._toxics = {}
        for toxic in toxics:
            kept = old.get(toxic.name)
            if kept is not None and kept[0] == toxic:
                self._toxics[toxic.name] = kept
            else:
                self._toxics[toxic.name] = (toxic, kept[1] if kept else self.opened)
        self.notify()

    def clear(self) -> None:
        """Remove every toxic (toxiproxy's ``POST /reset``)."""
        self._toxics.clear()
        self.notify()

    def notify(self) -> None:
        """Tell every live connection (each applies the change synchronously)."""
        for subscriber in list(self.subscribers):
            subscriber.toxics_changed()

    def subscribe(self, subscriber: Subscriber) -> int:
        """Count a new connection in; returns its ordinal (1 for the first)."""
        self.opened += 1
        self.subscribers.add(subscriber)
        return self.opened

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """The connection is gone."""
        self.subscribers.discard(subscriber)


class Targeting:
    """One connection's decisions: which toxics of a table it gets, decided once each."""

    def __init__(
        self, table: ToxicTable, ordinal: int, source: str, rng: Callable[[], random.Random]
    ) -> None:
        """``rng`` gives the connection's random source, made only if a draw needs it."""
        self.table = table
        self.ordinal = ordinal
        self.source = source
        self.rng = rng
        self._drawn: dict[tuple[str, float], bool] = {}
        self._applied: set[str] = set()  # counted in table.applied once per connection

    def applies(self, toxic: Toxic) -> bool:
        """True when this connection gets ``toxic``."""
        if toxic.nth and toxic.nth != self.ordinal:
            return False
        if toxic.peer and toxic.peer != self.source:
            return False
        if toxic.only_new and self.ordinal <= self.table.added_after(toxic.name):
            return False
        if toxic.toxicity >= 1:
            return True
        key = (toxic.name, toxic.toxicity)
        if key not in self._drawn:
            self._drawn[key] = self.rng().random() < toxic.toxicity
        return self._drawn[key]

    def chosen(self, stream: str) -> list[Toxic]:
        """The toxics of ``stream`` this connection gets, in chain order (each counted
        once per connection in the table's ``applied``)."""
        chosen = [t for t in self.table.toxics if t.stream == stream and self.applies(t)]
        for toxic in chosen:
            if toxic.name not in self._applied:
                self._applied.add(toxic.name)
                self.table.applied[toxic.name] += 1
        return chosen
