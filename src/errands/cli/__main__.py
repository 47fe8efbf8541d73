"""``python -m errands.cli``: the same as the ``errands`` command."""

from errands.cli import main

main()
