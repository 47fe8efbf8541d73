"""The prune service: delete results older than ``results_retention``.

Every worker runs it on its maintenance tick; each pass deletes one bounded
batch, so a large backlog shrinks over several ticks instead of holding one
long transaction. Workers pruning at the same time take different rows rather
than wait on each other (see ``prune_results`` in the backends' SQL).
"""

from __future__ import annotations

from errands.backends import Backend


class Prune:
    """Deletes results older than ``retention_seconds``."""

    def __init__(self, backend: Backend, *, retention_seconds: float) -> None:
        self.backend = backend
        self.retention_seconds = retention_seconds

    def run_once(self) -> int:
        """Delete one batch of expired results; returns how many were deleted."""
        return self.backend.prune_results(older_than_seconds=self.retention_seconds)
