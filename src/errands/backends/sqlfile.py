"""Load named SQL blocks from a backend's ``.sql`` file.

A block starts with a line ``-- name: some_name`` and runs until the next one.
Comments inside blocks are kept (they document locking) and are harmless to run.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

_NAME_LINE = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


@functools.cache
def load_queries(filename: str) -> dict[str, str]:
    """The blocks of ``errands/backends/<filename>`` by name."""
    text = resources.files("errands.backends").joinpath(filename).read_text(encoding="utf-8")
    parts = _NAME_LINE.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}
