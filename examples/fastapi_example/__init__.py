"""An errands example application (see examples/README.md)."""
