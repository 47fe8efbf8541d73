"""Job modules for tests/test_check.py: a package whose submodule ``broken`` fails to import."""
