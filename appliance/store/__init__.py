"""Run history in SQLite (issue 5)."""
