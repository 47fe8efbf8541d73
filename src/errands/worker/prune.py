"""The prune service: delete results older than ``results_retention``.

Every worker runs it on its maintenance tick; each pass deletes bounded batches,
so a large backlog shrinks over several ticks instead of holding one long
transaction. Workers pruning at the same time take different rows rather than
wait on each other (see ``prune_results`` in the backends' SQL).

Retention may differ by status (the setting as a table) and by job class (a
class's ``results_retention`` attribute). Rows are data: the pruner never imports
job code to decide. A class's retention is known to the workers that imported the
class (through the ``import`` setting, as they must to run it): each registers the
overrides of the classes loaded in its process when it starts. A pass then runs

* one delete per status with the setting's seconds for it, through the
  (status, ended_at) index, excepting the classes that keep that status longer
  (their rows are skipped, so each pass rescans only rows that must be kept);
* one delete per (overriding class, status), through the (job_class, ended_at) index.

Without a table and without overrides a pass is the one ``prune_results`` delete,
as before. Limitation: a worker that did not import an overriding class prunes its
results on the setting's retention, so every worker sharing the database should
import the classes that keep their results longer (the ``import`` setting).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from errands.backends import Backend
from errands.errors import ConfigurationError
from errands.jobs import Job
from errands.registry import job_class_path, registered_aliases
from errands.setting_values import RESULT_STATUSES, Invalid, Retention, to_retention


def as_retention(value: float | Retention) -> Retention:
    return value if isinstance(value, Retention) else Retention(default=float(value))


def class_retention(cls: type[Any], setting: float | Retention) -> Retention | None:
    """The class's own ``results_retention``, checked (statuses it leaves out keep the
    setting's seconds); None when it sets none."""
    value = getattr(cls, "results_retention", None)
    if value is None:
        return None
    fallback = as_retention(setting)
    try:
        parsed = to_retention(value, default=fallback.default)
    except Invalid as exc:
        raise ConfigurationError(
            f"invalid results_retention {value!r} of job class {job_class_path(cls)}: {exc}"
        ) from None
    if isinstance(parsed, float):
        return Retention(default=parsed)
    inherited = dict(fallback.by_status) if not _sets_default(value) else {}
    merged = {**inherited, **dict(parsed.by_status)}
    return Retention(
        default=parsed.default,
        by_status=tuple((s, merged[s]) for s in RESULT_STATUSES if s in merged),
    )


def _sets_default(value: Any) -> bool:
    if isinstance(value, str):
        return any(p.partition("=")[0].strip().lower() == "default" for p in value.split(","))
    return isinstance(value, Mapping) and any(str(k).lower() == "default" for k in value)


def _job_classes() -> Iterable[type[Job]]:
    seen: set[type[Job]] = set()
    pending = list(Job.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls not in seen:
            seen.add(cls)
            pending.extend(cls.__subclasses__())
    # A class defined in a function: no path loads it, so no row names it.
    loadable = (cls for cls in seen if "<locals>" not in cls.__qualname__)
    return sorted(loadable, key=job_class_path)


def class_overrides(setting: float | Retention) -> dict[str, Retention]:
    """The retention of each job class loaded in this process that sets its own, by
    the paths its rows may carry (its path and its aliases)."""
    aliases: dict[str, list[str]] = {}
    for alias, path in registered_aliases().items():
        aliases.setdefault(path, []).append(alias)
    overrides: dict[str, Retention] = {}
    for cls in _job_classes():
        retention = class_retention(cls, setting)
        if retention is not None:
            path = job_class_path(cls)
            for stored in (path, *aliases.get(path, ())):
                overrides[stored] = retention
    return overrides


class Prune:
    """Deletes results older than their retention (see the module docstring)."""

    def __init__(
        self,
        backend: Backend,
        *,
        retention_seconds: float | Retention,
        classes: Mapping[str, Retention] | None = None,
        batch_size: int = 1000,
    ) -> None:
        self.backend = backend
        self.retention = as_retention(retention_seconds)
        self.classes = dict(classes or {})
        self.batch_size = batch_size

    @classmethod
    def of_process(cls, backend: Backend, setting: float | Retention) -> Prune:
        """With the overrides of the job classes this process imported."""
        return cls(backend, retention_seconds=setting, classes=class_overrides(setting))

    def run_once(self) -> int:
        """Delete one batch per rule of expired results, and one of ended workflows
        older than the longest retention; returns how many results were deleted."""
        self.backend.prune_workflows(
            older_than_seconds=self.retention.longest(), batch_size=self.batch_size
        )
        prune = self.backend.prune_results
        by_status = self.retention.per_status()
        if not self.classes and len(set(by_status.values())) == 1:
            return prune(older_than_seconds=self.retention.default, batch_size=self.batch_size)
        pruned = 0
        for status, seconds in by_status.items():
            keep_longer = sorted(
                path for path, own in self.classes.items() if own.seconds(status) > seconds
            )
            pruned += prune(
                older_than_seconds=seconds,
                batch_size=self.batch_size,
                status=status,
                except_classes=keep_longer,
            )
        for path, own in sorted(self.classes.items()):
            for status, seconds in own.per_status().items():
                if seconds < by_status[status]:  # else the status pass deletes them
                    pruned += prune(
                        older_than_seconds=seconds,
                        batch_size=self.batch_size,
                        status=status,
                        job_class=path,
                    )
        return pruned
