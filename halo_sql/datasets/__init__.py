"""Data sets the demo, the tests and the benchmark generate locally (no downloads)."""
