"""Run history in SQLite: every step saved, crash-safe resume, search and trajectory export.

The store subscribes to the agent's events (`History.recorder()`); the agent
knows nothing about SQL. See docs/history.md.
"""

from appliance.policy import RESUMABLE
from appliance.store.db import RunNotFound, StoreError, StoreUsageError
from appliance.store.history import History, open_history
from appliance.store.recorder import Recorder
from appliance.store.records import (
    MessageRecord,
    PruneReport,
    ResumePoint,
    RunRecord,
    RunSummary,
    SearchHit,
    Step,
    ToolCallRecord,
)

__all__ = [
    "RESUMABLE",
    "History",
    "MessageRecord",
    "PruneReport",
    "Recorder",
    "ResumePoint",
    "RunNotFound",
    "RunRecord",
    "RunSummary",
    "SearchHit",
    "Step",
    "StoreError",
    "StoreUsageError",
    "ToolCallRecord",
    "open_history",
]
