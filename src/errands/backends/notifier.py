"""Wake-ups: how a worker learns that work may be due, and a waiter that results exist."""

from __future__ import annotations

import abc
import uuid
from collections.abc import Callable


class Listener(abc.ABC):
    """A running wake-up source; stop it with :meth:`close`."""

    @abc.abstractmethod
    def close(self) -> None: ...


class Notifier(abc.ABC):
    """Subscriptions to new work and new results (LISTEN/NOTIFY, or SQLite's data version)."""

    @abc.abstractmethod
    def listen(self, *, on_wake: Callable[[], None]) -> Listener:
        """Call ``on_wake`` (from a background thread) soon after new work may be due."""

    def listen_results(
        self, *, on_results: Callable[[frozenset[uuid.UUID] | None], None]
    ) -> Listener:
        """Call ``on_results`` (from a background thread) soon after results are written,
        with the request uuids of the new results, or None when unknown ("look again").

        Used by ``errands.wait_for_result``. The listener is subscribed when this
        returns. This default relays every wake-up of :meth:`listen` as None, which
        suits backends whose ``listen`` fires on any commit (SQLite).
        """
        return self.listen(on_wake=lambda: on_results(None))
