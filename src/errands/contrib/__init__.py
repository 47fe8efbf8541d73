"""Integrations with web frameworks (each behind its own extra, e.g. ``errands[django]``)."""
