"""What ``import errands`` costs every process that imports it (each worker child
among them): asyncio and croniter are imported only when first used."""

from __future__ import annotations

import subprocess
import sys

import errands


def test_import_errands_leaves_asyncio_and_croniter_for_first_use() -> None:
    code = (
        "import sys, errands, errands.worker.child\n"
        "print(sorted(m for m in ('asyncio', 'croniter') if m in sys.modules))"
    )
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert shown.strip() == "[]"


def test_the_lazy_names_resolve_and_unknown_ones_still_fail() -> None:
    from errands import Schedule, enqueue_many_async  # through __getattr__

    assert Schedule.__module__ == "errands.scheduler"
    assert enqueue_many_async.__module__ == "errands.async_enqueue"
    assert "Schedule" in errands.__all__
    try:
        errands.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("an unknown attribute resolved")
