"""Benchmarks, each run from the repository root as `python -m bench.NAME` (see RESULTS.md); not part
of the test suite."""
