r"""A task above a single run: attempts with failure experience, as the reference runs them.

The reference (benchmarks/common_benchmark.py and src/core/answer_generator.py
at 370f983) gives a task up to 1 + `context_compress_limit` runs ([agent]
attempts here, default 5). A run that ends without a \boxed{} answer writes a
failure-experience summary, and the next run's task is the original task
plus every summary so far (protocol/failure.py). Its decision table, for the
end of each run (answer_plan):

| attempts | final | out of turns/context | answer turn | fallback to an earlier box | failure summary |
|----------|-------|----------------------|-------------|----------------------------|-----------------|
| 0 (off)  | -     | either               | yes         | yes                        | no              |
| > 0      | yes   | either               | yes         | yes                        | no              |
| > 0      | no    | no                   | yes         | no                         | if no box       |
| > 0      | no    | yes                  | skipped     | no                         | yes             |

(the failure summary only with retry_with_summary; "fallback" is the last
\boxed{} the model wrote during the run, used when the answer turn has none).

A failure summary that is missing (the call failed, the reply was empty) is
not an error: the next attempt starts without it, as in the reference.

Everything here is pure except run_failure_summary, which makes the one call.
The run session drives the attempts; see TaskAttempts for the order of calls.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

from appliance.agent.calls import call_model, reply_ended
from appliance.agent.events import AgentEvent, AttemptStarted, Notice
from appliance.errors import ApplianceError
from appliance.llm.base import Backend, ChatMessage
from appliance.protocol.failure import (
    FAILURE_SUMMARY_ASSISTANT_PREFIX,
    FAILURE_SUMMARY_PROMPT,
    extract_failure_summary,
    render_enhanced_task,
)

# Loop endings the reference counts as "reached max turns" (a full context sets turn_count = max_turns).
_OUT_OF_ROOM = frozenset({"max_turns", "context_full"})


@dataclass(frozen=True)
class AnswerPlan:
    """What the end of one run does (the reference's generate_and_finalize_answer)."""

    generate_answer: bool  # run the summary turn that asks for \boxed{}
    fallback_to_intermediate: bool  # no box: use the last \boxed{} the model wrote during the run
    failure_summary_when_unboxed: bool  # no box: write a failure summary for the next attempt

    @classmethod
    def single_run(cls) -> AnswerPlan:
        """Attempts off: today's behaviour, one run that always answers if it can."""
        return cls(generate_answer=True, fallback_to_intermediate=True, failure_summary_when_unboxed=False)


def ran_out_of_room(summary_reason: str | None) -> bool:
    """The loop ended because the turn budget or the context window ran out."""
    return summary_reason in _OUT_OF_ROOM


def answer_plan(*, attempts: int, retry_with_summary: bool, final_attempt: bool, out_of_room: bool) -> AnswerPlan:
    """The reference's decision table (module docstring)."""
    if attempts <= 0 or final_attempt:
        return AnswerPlan.single_run()
    return AnswerPlan(
        generate_answer=not out_of_room,
        fallback_to_intermediate=False,
        failure_summary_when_unboxed=retry_with_summary,
    )


@dataclass(frozen=True)
class AttemptResult:
    """How one attempt of a task ended, as the session records it."""

    number: int
    answer: str | None
    failure_summary: str | None = None


@dataclass
class TaskAttempts:
    """The attempts of one task. The session, for each attempt:

    1. starts a run of the current attempt: runtime.prepare_run(..., attempts=this) gives it
       `task_text()` (the reference passes the enhanced text as the task everywhere, the
       summary prompt included) and its number, so Agent.run ends it by the decision table
       and, when it ends without an answer, writes the failure summary before RunFinished
       (RunFinished.failure_summary);
    2. calls `finish(answer, failure_summary)` with what RunFinished says; while it returns
       True, goes to 1.
    """

    task: str
    attempts: int = 5
    retry_with_summary: bool = True
    number: int = 1
    failure_summaries: list[str] = field(default_factory=list)
    results: list[AttemptResult] = field(default_factory=list)

    @property
    def total(self) -> int:
        return 1 + max(0, self.attempts)

    @property
    def is_final(self) -> bool:
        return self.number >= self.total

    @property
    def answer(self) -> str | None:
        return self.results[-1].answer if self.results else None

    def task_text(self) -> str:
        return render_enhanced_task(self.task, self.failure_summaries)

    def plan(self, *, out_of_room: bool) -> AnswerPlan:
        return answer_plan(
            attempts=self.attempts,
            retry_with_summary=self.retry_with_summary,
            final_attempt=self.is_final,
            out_of_room=out_of_room,
        )

    def finish(self, answer: str | None, failure_summary: str | None = None) -> bool:
        """Record the attempt that just ended; True when another attempt follows."""
        summary = failure_summary.strip() if failure_summary else ""
        self.results.append(AttemptResult(self.number, answer or None, summary or None))
        if answer or self.is_final:
            return False
        if summary:
            self.failure_summaries.append(summary)
        self.number += 1
        return True

    def progress_line(self) -> str:
        """What the faces say when an attempt starts: 'attempt 2/6: starting again with 1 failure summary'."""
        if self.number == 1:
            return f"attempt 1/{self.total}"
        return self.started().line

    def started(self) -> AttemptStarted:
        """The event that announces the current attempt."""
        return AttemptStarted(self.number, self.total, len(self.failure_summaries))


def failure_summary_messages(conversation: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The reference's failure-summary history: a trailing user message dropped, then the prompt.

    The assistant prefix is not in the list: call_model continues it.
    """
    messages = list(conversation)
    if len(messages) > 1 and messages[-1].role == "user":
        messages.pop()
    messages.append(ChatMessage("user", FAILURE_SUMMARY_PROMPT))
    return messages


def run_failure_summary(
    backend: Backend,
    conversation: Sequence[ChatMessage],
    *,
    turn: int,
    max_tokens: int,
    cancel: threading.Event | None = None,
) -> Generator[AgentEvent, None, str | None]:
    """Ask the model for the failure summary of the run in `conversation` (system prompt first,
    as the run's context shows it); yields the call's events, returns the summary or None.

    The model continues the fixed assistant prefix (a closed think block); the
    summary is the text after it and before any tool call, else the think text.
    A failed call or an empty summary returns None and the next attempt starts
    without it. A cancelled run raises RunCancelled.
    """
    messages = failure_summary_messages(conversation)
    prefix = ChatMessage("assistant", FAILURE_SUMMARY_ASSISTANT_PREFIX)
    prompt_tokens = backend.count_messages([*messages, prefix])
    budget = min(max_tokens, backend.context_length - prompt_tokens)
    if budget < 16:
        yield Notice(
            "warning", "the failure summary does not fit the context window; the next attempt starts without it"
        )
        return None
    try:
        reply = yield from call_model(
            backend,
            messages,
            turn=turn,
            kind="failure_summary",
            prompt_tokens=prompt_tokens,
            max_tokens=budget,
            purpose="summary",
            cancel=cancel,
            prefix=FAILURE_SUMMARY_ASSISTANT_PREFIX,
        )
    except ApplianceError as exc:
        yield Notice("warning", f"no failure summary ({exc.one_line()}); the next attempt starts without it")
        return None
    text = FAILURE_SUMMARY_ASSISTANT_PREFIX + reply.text
    yield reply_ended(turn, "failure_summary", reply, text, 0)
    # As the reference: any reply text (even blank) is read with the prefix, so a blank
    # reply yields the prefix's own think text; only no text at all means no summary.
    summary = extract_failure_summary(text) if reply.text else ""
    if not summary:
        yield Notice("warning", "the failure summary is empty; the next attempt starts without it")
    return summary or None
