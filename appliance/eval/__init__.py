"""Benchmark harness: GAIA-format tasks, scoring, reports."""
