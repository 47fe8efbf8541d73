"""Jobs enqueued through Django's tasks framework say so in their ``source``, not with
the line inside Django that called errands (the project and its databases: test_django)."""

from __future__ import annotations

import textwrap

import pytest

from test_django import Project, project  # noqa: F401 (the fixture)

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import django
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    sys.path.insert(0, os.getcwd())
    django.setup()
    from shop import tasks
    import errands
    enqueued = tasks.count_orders.enqueue("ap")
    print("source=" + errands.get(enqueued.id).source)
    """
)


@pytest.mark.slow
def test_django_tasks_enqueue_with_their_own_source(project: Project) -> None:  # noqa: F811
    output = project.run("-c", SCRIPT).stdout
    assert "source=django:tasks" in output.splitlines(), output
