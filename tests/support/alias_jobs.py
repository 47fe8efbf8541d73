"""A job renamed twice: its old paths stay loadable through aliases (tests/test_aliases.py)."""

from __future__ import annotations

from errands import Job, register_job


@register_job(aliases=["alias_jobs_old.Greet", "alias_jobs.OldGreet"])
class Greet(Job):
    """Was ``alias_jobs_old.Greet``, then ``alias_jobs.OldGreet``."""

    def __init__(self, name: str, *, punctuation: str = "!") -> None:
        self.name = name
        self.punctuation = punctuation

    def run(self) -> str:
        return f"hello {self.name}{self.punctuation}"
