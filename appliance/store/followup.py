"""The parent of a follow-up question: found, checked, and read as the follow-up starts from it.

Read-only: the parent is never modified. The session (appliance.session.followup_session)
starts the follow-up from what `followup_source` returns (agent/followup.py).
"""

from __future__ import annotations

from appliance.agent.context import last_seen_conversation, recorded_keep_rule
from appliance.agent.followup import FollowUpSource
from appliance.llm.base import ChatMessage
from appliance.policy import RunStatus, Standing
from appliance.store.db import StoreUsageError
from appliance.store.history import History
from appliance.store.rebuild import rebuild_state
from appliance.store.records import RunRecord
from appliance.store.report import report_context


def followup_parent(history: History, run_id: str) -> RunRecord:
    """The finished run a follow-up of `run_id` continues: the final attempt of that run's task.

    An unknown id is RunNotFound; a run still running, interrupted or failed is refused with the fix.
    """
    run = history.get_run(run_id)
    final = history.task_attempts(run.run_id)[-1]
    standing = RunStatus.of(final.status).standing
    if standing is Standing.LIVE:
        raise StoreUsageError(
            f"run {final.run_id} is still running (pid {final.pid} on {final.host}); a follow-up needs a finished run",
            "wait for it to finish, then ask again",
        )
    if standing is not Standing.FINISHED:
        raise StoreUsageError(
            f"run {final.run_id} did not finish ({final.status}); a follow-up needs a finished run",
            f"resume it first: appliance resume {final.run_id}",
        )
    return final


def parent_conversation(history: History, run: RunRecord) -> list[ChatMessage]:
    """The run's conversation as the model last saw it, system prompt first (the loop's own state and view)."""
    state = rebuild_state(run, history.event_log(run.run_id)).state
    rule = recorded_keep_rule(run.settings)
    return last_seen_conversation(
        state.system_prompt, state.context, state.messages, rule, in_summary=state.phase == "summary"
    )


def followup_source(history: History, run_id: str) -> tuple[RunRecord, FollowUpSource]:
    """The parent run and what a follow-up of it may start from."""
    parent = followup_parent(history, run_id)
    source = FollowUpSource(parent.run_id, tuple(parent_conversation(history, parent)), tuple(report_context(parent)))
    return parent, source
