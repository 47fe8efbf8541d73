"""Imported only when a stored path names it (see the package's docstring)."""

from __future__ import annotations

from errands import Job, register_job


@register_job
class Lazy(Job):
    def run(self) -> str:
        return "loaded on demand"
