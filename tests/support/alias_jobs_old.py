"""The module a renamed job used to live in. Importing it is a failure: an alias
resolves without importing the old path's module (tests/test_aliases.py)."""

raise AssertionError("a stored path imported alias_jobs_old: an alias imported its old module")
