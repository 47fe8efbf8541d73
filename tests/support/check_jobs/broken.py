"""A job module that exists and fails to import (tests/test_check.py)."""

raise RuntimeError("check_jobs.broken cannot be imported")
