"""Where an enqueue came from: the ``source`` errands stores when the caller names none."""

from __future__ import annotations

import os
import sys

_PACKAGE_DIR = os.path.dirname(__file__)


def caller_location() -> str:
    """``file:line`` of the first frame outside errands: where the job was enqueued from."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def storable(text: str) -> str:
    """``text`` as a database stores it."""
    if text.isascii():
        return text
    # A file name that is not UTF-8 holds lone surrogates, which no database stores.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
