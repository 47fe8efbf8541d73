"""The worker: claims jobs in batches, runs them in child processes, records outcomes.

The parent process owns the database; its children run job code and hand back
plain outcomes. The modules, from the loop down:

* ``loop``: the ``Worker`` class, one loop that turns the parts below;
* ``intake``: how many jobs to hold (pacing) and claiming them, off the loop's thread;
* ``batches``: outcomes and start stamps buffered, written in batches off the loop's thread;
  ``deferrals``: a DEFERRED result written with its re-enqueue through ``should_enqueue``;
* ``supervision``: timeouts, cancellations, kills, dead children, shutdown;
* ``heartbeat``, ``schedules``, ``rescue``, ``prune``, ``stats``: background services,
  each with a ``run_once()`` that does one bounded pass and returns what it did,
  driven by the loop on its tick (``timing``: when each is due, and backing off
  while the database fails); ``followups``: every LOST job's ``on_aborted`` hooks and
  retry, settled by whichever worker can load its class (run by ``rescue``);
  ``results``: metrics and hooks after results are written;
* ``pool``: the children as the parent sees them; ``protocol``: the messages
  between parent and child; ``child``: what runs in a child; ``output``: what jobs
  print or log, written in whole lines (labelled with the job if asked);
* ``execution``: running one job into an ``Outcome`` (retries included), with
  ``errands.containment`` (user code never stops the worker; the enqueueing side
  uses it too, so it lives below both).

Importing this package loads none of them: ``Worker`` and the exceptions whose
names are stored as error types load on first use, so a child process pays only
for what it imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from errands.worker.execution import qualified_name
    from errands.worker.loop import Worker
    from errands.worker.supervision import Cancelled, Interrupted, ProcessDied

_EXPORTS = {
    "Worker": "errands.worker.loop",
    "Cancelled": "errands.worker.supervision",
    "Interrupted": "errands.worker.supervision",
    "ProcessDied": "errands.worker.supervision",
    "qualified_name": "errands.worker.execution",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'errands.worker' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


__all__ = ["Cancelled", "Interrupted", "ProcessDied", "Worker", "qualified_name"]
