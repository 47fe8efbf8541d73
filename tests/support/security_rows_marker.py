"""A module with an observable import side effect, outside every ``import`` setting.

Importing it appends this process's id to the file named by the environment
variable ``SECURITY_ROWS_MARKER``: a stored path naming it must import nothing.
"""

from __future__ import annotations

import os

from errands import Job, register_job

_marker = os.environ.get("SECURITY_ROWS_MARKER")
if _marker:
    with open(_marker, "a") as file:
        file.write(f"imported by process {os.getpid()}\n")


@register_job
class Planted(Job):
    def run(self) -> str:
        return "should never run"
