"""Jobs for tests/test_security_rows.py; a package the test workers' ``import`` setting names.

Its submodule ``lazy`` is imported by nobody up front: a stored path naming it
shows that modules inside an ``import`` package still load on demand.
"""

from __future__ import annotations

import sys

from errands import Job, register_job


@register_job
class ModulesLoaded(Job):
    """Which of ``names`` are imported in the process running this job."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def run(self) -> dict[str, bool]:
        return {name: name in sys.modules for name in self.names}
