"""The `tool-python` server: a bubblewrap sandbox with a persistent Python kernel (see docs/sandbox.md)."""
