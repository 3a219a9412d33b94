"""The ReAct loop: think, call one tool, read the result, up to the turn budget.

`Agent.run(state)` is a generator of events (see events.py). It follows the
reference agent's run rules (protocol doc): every assistant turn is kept, tool
results only for the last K turns; a bad reply is discarded and sampled again
(at most `max_rollbacks` in a row); the loop ends when a reply calls no tool,
when the turn budget is spent or when the next turn would not fit the context;
then a summary turn asks for the answer in \\boxed{}.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Generator, Iterator
from typing import Any

from appliance.agent.attempts import AnswerPlan, answer_plan, ran_out_of_room, run_failure_summary
from appliance.agent.calls import Reply, RunCancelled, call_model, reply_ended
from appliance.agent.context import kept_result_positions, run_view
from appliance.agent.events import (
    AgentEvent,
    Notice,
    ObservationAdded,
    RunFinished,
    RunStarted,
    SummaryStarted,
    ToolCallFinished,
    ToolCallStarted,
    ToolResultOmitted,
    TurnKept,
    TurnKind,
    TurnRolledBack,
)
from appliance.agent.state import RunState, advance
from appliance.config import AgentSettings
from appliance.errors import ApplianceError, ExitCode
from appliance.llm.base import Backend, ChatMessage
from appliance.protocol.answer import extract_boxed
from appliance.protocol.parsing import (
    ToolCall,
    fix_server_names,
    has_mcp_tags,
    is_degenerate,
    parse_tool_calls,
    query_key,
    refusal_phrase,
    tool_server_map,
)
from appliance.protocol.prompt import render_summary_prompt
from appliance.tools.base import CallContext, ToolBox, ToolOutcome

# Results the reference treats as a wasted turn: the reply is sampled again.
_ROLLBACK_RESULT_PREFIXES = ("Unknown tool:", "Error executing tool")
# Reference: beyond max_turns, at most this many extra attempts (rollbacks).
_EXTRA_ATTEMPTS = 200


class Agent:
    def __init__(
        self,
        backend: Backend,
        toolbox: ToolBox,
        settings: AgentSettings,
        call_context: CallContext,
        *,
        max_tokens: int = 16384,
        settings_snapshot: dict[str, Any] | None = None,
    ) -> None:
        self.backend = backend
        self.toolbox = toolbox
        self.settings = settings
        self.ctx = call_context
        self.max_tokens = max_tokens
        self.settings_snapshot = settings_snapshot or {}
        self.cancelled = threading.Event()
        self.ctx.cancel = self.cancelled
        self._token_cache: dict[str, int] = {}

    # ------------------------------------------------------------ public

    def cancel(self) -> None:
        """Stop the run at the next safe point; the current tool call is stopped too."""
        self.cancelled.set()

    def run(self, state: RunState) -> Iterator[AgentEvent]:
        """The run's events; each has moved `state` (appliance.agent.state.advance) before it is seen."""
        for event in self._run(state):
            advance(state, event)
            yield event

    def _run(self, state: RunState) -> Iterator[AgentEvent]:
        started = time.monotonic()
        yield RunStarted(
            run_id=state.run_id,
            task=state.task,
            task_message=state.task_message,
            system_prompt=state.system_prompt,
            settings=self.settings_snapshot,
            backend=self.backend.describe(),
            attachments=state.attachments,
            resumed=state.resumed,
            turn=state.turn,
            workspace=str(self.ctx.workspace),
            tool_calls=state.tool_calls,
            prompt_tokens=state.prompt_tokens,
            completion_tokens=state.completion_tokens,
            attempt=state.attempt,
            task_root=state.task_root,
            parent_run=state.parent_run,
            context_mode=state.context_mode,
            context=tuple(state.context),
        )
        for problem in self.toolbox.problems():
            yield Notice("warning", problem)
        status, answer, final_text, error, code = "error", None, "", None, ExitCode.USAGE
        failure_summary: str | None = None
        try:
            reason = state.summary_reason
            if state.phase == "loop" and reason is None:
                reason = yield from self._loop(state)
            answer, final_text = yield from self._summarize(state, reason)
            if not answer and self.answer_plan(state, reason).failure_summary_when_unboxed:
                # Before RunFinished, so the store keeps the reply with the run it sums up.
                failure_summary = yield from self._failure_summary(state)
            status = "answered" if answer else "no_answer"
            code = ExitCode.ANSWERED if answer else ExitCode.NO_ANSWER
        except (RunCancelled, KeyboardInterrupt):
            self.cancelled.set()
            status, error, code = "interrupted", "interrupted by the user", ExitCode.INTERRUPTED
        except ApplianceError as exc:
            status, error, code = "error", exc.one_line(), exc.exit_code
        except Exception as exc:  # the loop must end with a RunFinished, whatever broke
            error = f"internal error (a bug): {type(exc).__name__}: {exc}. Fix: report it; --debug prints the traceback"
            status, code = "error", ExitCode.INTERNAL
            yield Notice("debug", traceback.format_exc())
        yield RunFinished(
            run_id=state.run_id,
            status=status,  # type: ignore[arg-type]
            answer=answer,
            final_text=final_text,
            turns=state.turn,
            tool_calls=state.tool_calls,
            prompt_tokens=state.prompt_tokens,
            completion_tokens=state.completion_tokens,
            elapsed_s=state.elapsed_before + time.monotonic() - started,
            error=error,
            exit_code=int(code),
            failure_summary=failure_summary,
            attempt=state.attempt,
        )

    def answer_plan(self, state: RunState, loop_ended_by: str | None = None) -> AnswerPlan:
        """How this run ends: answer turn, intermediate fallback, failure summary (the reference's table).

        `loop_ended_by` is why the loop ended, before the summary records it in the state.
        """
        return answer_plan(
            attempts=state.attempts_total - 1,
            retry_with_summary=self.settings.retry_with_summary,
            final_attempt=state.attempt >= state.attempts_total,
            out_of_room=ran_out_of_room(loop_ended_by or state.summary_reason),
        )

    def _failure_summary(self, state: RunState) -> Generator[AgentEvent, None, str | None]:
        """The failure summary of a run that ended without an answer, over the context it ended with."""
        # The summary's reply is still pending (it is kept when the run ends): the failure summary sees it.
        shown = list(state.messages)
        if state.pending_reply is not None:
            shown.append(ChatMessage("assistant", state.pending_reply))
        view = self._view(state, shown)
        return run_failure_summary(
            self.backend, view, turn=state.turn + 1, max_tokens=self.max_tokens, cancel=self.cancelled
        )

    # ------------------------------------------------------------ helpers

    def _check_cancel(self) -> None:
        if self.cancelled.is_set():
            raise RunCancelled()

    def _tokens(self, text: str) -> int:
        cached = self._token_cache.get(text)
        if cached is None:
            cached = self.backend.count_tokens(text)
            if len(self._token_cache) > 4096:
                self._token_cache.clear()
            self._token_cache[text] = cached
        return cached

    def _view(self, state: RunState, messages: list[ChatMessage] | None = None) -> list[ChatMessage]:
        agent = self.settings
        shown = state.messages if messages is None else messages
        rule = (agent.keep_last, agent.eviction, agent.eviction_block)
        return run_view(state.system_prompt, state.context, shown, rule, in_summary=state.phase == "summary")

    def _prompt_tokens(self, view: list[ChatMessage]) -> int:
        # The backend's own count: exact for a local model (its chat template, rendered and tokenized).
        return self.backend.count_messages(view)

    def _omitted_turns(self, state: RunState) -> set[int]:
        """Turn numbers whose results are currently shown as the placeholder."""
        agent = self.settings
        kept = kept_result_positions(state.messages, agent.keep_last, agent.eviction, agent.eviction_block)
        user_positions = [i for i, m in enumerate(state.messages) if m.role == "user"][1:]
        # The k-th observation (1-based) belongs to the k-th committed turn that called tools;
        # positions are mapped to turns through the assistant message before each.
        return {self._turn_of_observation(state, p) for p in user_positions if p not in kept}

    @staticmethod
    def _turn_of_observation(state: RunState, position: int) -> int:
        return sum(1 for m in state.messages[:position] if m.role == "assistant")

    def _generate(self, state: RunState, turn: int, kind: TurnKind, attempt: int) -> Generator[AgentEvent, None, Reply]:
        view = self._view(state)
        prompt_tokens = self._prompt_tokens(view)
        budget = self.backend.context_length - prompt_tokens
        if budget < 16:
            raise ApplianceError(
                f"the prompt ({prompt_tokens} tokens) does not fit the context window "
                f"({self.backend.context_length} tokens)",
                "raise [model] context_length or lower --keep-last",
            )
        # The call's tokens reach the state through its TurnEnded events (agent/state.advance).
        return (
            yield from call_model(
                self.backend,
                view,
                turn=turn,
                kind=kind,
                prompt_tokens=prompt_tokens,
                max_tokens=min(self.max_tokens, budget),
                purpose="summary" if kind == "summary" else "turn",
                cancel=self.cancelled,
                attempt=attempt,
            )
        )

    # ------------------------------------------------------------ the loop

    def _loop(self, state: RunState) -> Generator[AgentEvent, None, str]:
        """The turns, until one of them ends the loop; returns why (the summary's reason)."""
        server_map = tool_server_map(state.system_prompt)
        max_turns = self.settings.max_turns
        max_rollbacks = self.settings.max_rollbacks
        attempts = 0

        # A resumed run may stop between a recorded reply and its results:
        # execute that reply's calls rather than sampling a new one.
        if state.messages and state.messages[-1].role == "assistant":
            calls = parse_tool_calls(state.messages[-1].content)
            if not calls:
                return "no_tool_call"
            # The same step as when the reply first arrived, so a resumed run goes where the live one went.
            stop = yield from self._run_calls(state, calls)
            if stop:
                return stop
        elif (
            # Stopped right after a turn's results: the live loop checked the context next.
            state.resumed
            and len(state.messages) > 1
            and state.messages[-1].role == "user"
            and not (yield from self._fits_next_turn(state))
        ):
            return "context_full"

        while state.turn < max_turns and attempts < max_turns + _EXTRA_ATTEMPTS:
            self._check_cancel()
            if state.rollback_streak >= max_rollbacks:
                return "rollbacks"
            attempts += 1
            turn = state.turn + 1
            reply = yield from self._generate(state, turn, "turn", state.rollback_streak + 1)
            text = fix_server_names(reply.text, server_map)
            calls = parse_tool_calls(text)
            reason, detail = self._rollback_reason(state, text, calls)
            yield reply_ended(turn, "turn", reply, text, len(calls))
            if reason and state.rollback_streak < max_rollbacks - 1:
                yield TurnRolledBack(turn, "turn", reason, detail)
                continue
            yield TurnKept(turn, "turn")
            if reason in ("format", "refusal", "empty"):
                return "rollbacks"  # out of rollbacks: the reply stands and the loop ends
            if not calls:
                return "no_tool_call"
            stop = yield from self._run_calls(state, calls)
            if stop:
                return stop
        return "max_turns"

    def _run_calls(self, state: RunState, calls: list[ToolCall]) -> Generator[AgentEvent, None, str | None]:
        """Run the calls of the turn just kept. Returns why the loop ends now, or None when it goes on.

        A call the reference treats as wasted (unknown tool, invalid arguments, an
        empty search) forgets the turn, to be sampled again, while rollbacks are
        left; otherwise the next turn must still fit the context.
        """
        turn = state.turn
        can_roll_back = state.rollback_streak < self.settings.max_rollbacks - 1
        wasted = yield from self._execute(
            state, turn, calls, allow_duplicates=not can_roll_back, stop_when_wasted=can_roll_back
        )
        if wasted is not None:
            yield TurnRolledBack(turn, "turn", wasted[0], wasted[1])
            return None
        return None if (yield from self._fits_next_turn(state)) else "context_full"

    def _rollback_reason(self, state: RunState, text: str, calls: list[ToolCall]) -> tuple[str | None, str]:
        if not text.strip():
            return "empty", "the model returned an empty reply"
        if is_degenerate(text):
            return "repetition", "the reply repeats itself"
        if not calls:
            if has_mcp_tags(text):
                return "format", "the reply has tool-call tags but no parseable call"
            phrase = refusal_phrase(text)
            if phrase:
                return "refusal", f"the reply contains {phrase!r}"
            return None, ""
        for call in calls:
            if call.error:
                return "bad_arguments", f"{call.tool}: {call.error}"
            key = query_key(call.tool, call.arguments)
            if key is not None and state.used_queries.get(key):
                return "duplicate", key
        return None, ""

    def _execute(
        self, state: RunState, turn: int, calls: list[ToolCall], *, allow_duplicates: bool, stop_when_wasted: bool
    ) -> Generator[AgentEvent, None, tuple[str, str] | None]:
        """Run the calls of one reply, add the joined results as one user message.

        With `stop_when_wasted`, stops at the first result the reference treats
        as a wasted turn and returns (reason, detail) without adding results.
        """
        omitted_before = self._omitted_turns(state)
        results: list[str] = []
        for index, call in enumerate(calls):
            self._check_cancel()
            yield ToolCallStarted(turn, index, call.server, call.tool, dict(call.arguments))
            key = query_key(call.tool, call.arguments)
            if call.error:
                outcome = ToolOutcome(
                    call.server,
                    call.tool,
                    "Tool call arguments are invalid: they must be one JSON object matching the tool's "
                    f"input schema ({call.error}). Raw arguments: {call.raw_arguments[:500]}",
                    "bad_arguments",
                    0.0,
                )
            elif key is not None and state.used_queries.get(key) and allow_duplicates:
                outcome = ToolOutcome(
                    call.server,
                    call.tool,
                    f"This exact {call.tool} call was already made earlier in this run and its result was "
                    "returned then. Do not repeat it: use the earlier result, or try a different query or URL.",
                    "duplicate",
                    0.0,
                )
            else:
                outcome = self.toolbox.call(call.server, call.tool, call.arguments, self.ctx)
                if outcome.status == "cancelled":
                    raise RunCancelled()
            text, truncated = self._format_outcome(outcome)
            yield ToolCallFinished(
                turn,
                index,
                call.server,
                call.tool,
                dict(call.arguments),
                text,
                outcome.status,
                outcome.duration_s,
                truncated,
                len(outcome.text),
                tuple(outcome.meta.get("archive", ())),
            )
            if outcome.meta.get("notice"):
                yield Notice("warning", str(outcome.meta["notice"]))
            results.append(text)
            wasted = self._wasted(outcome)
            if wasted is not None and stop_when_wasted:
                return wasted
        observation = "\n".join(results)
        yield ObservationAdded(turn, observation, self._tokens(observation))
        for omitted_turn in sorted(self._omitted_turns(state) - omitted_before):
            yield ToolResultOmitted(omitted_turn)
        return None

    @staticmethod
    def _wasted(outcome: ToolOutcome) -> tuple[str, str] | None:
        if outcome.status in ("unknown_tool", "bad_arguments") or outcome.text.startswith(_ROLLBACK_RESULT_PREFIXES):
            return "tool_error", outcome.text[:200]
        if outcome.tool == "google_search" and outcome.ok and outcome.meta.get("empty"):
            return "empty_search", "the search returned no results"
        return None

    def _format_outcome(self, outcome: ToolOutcome) -> tuple[str, bool]:
        return outcome.model_text(self.settings.result_max_chars)

    def _fits_next_turn(self, state: RunState) -> Generator[AgentEvent, None, bool]:
        """After a turn's results: can the next turn still fit? If not, drop it for the summary."""
        summary_tokens = self._tokens(render_summary_prompt(state.task))
        needed = self._prompt_tokens(self._view(state)) + summary_tokens + self.max_tokens
        if needed <= self.backend.context_length:
            return True
        # The reference removes the last reply and its results, then summarizes.
        yield TurnRolledBack(
            state.turn,
            "turn",
            "context_full",
            f"{needed} tokens needed, the context holds {self.backend.context_length}",
        )
        return False

    # ------------------------------------------------------------ summary

    def _summarize(self, state: RunState, reason: str | None) -> Generator[AgentEvent, None, tuple[str | None, str]]:
        self._check_cancel()
        plan = self.answer_plan(state, reason)
        if not plan.generate_answer:
            # Not the last attempt and out of turns or context: any answer would be a blind guess.
            yield Notice("info", f"attempt {state.attempt}/{state.attempts_total} ran out of turns or context; "
                         "no answer is guessed")  # fmt: skip
            return None, ""
        reason = reason or ("resumed" if state.resumed else "no_tool_call")
        prompt = render_summary_prompt(state.task)
        dropped: int | None = None
        if state.phase != "summary":
            # The summary needs room for its answer: when the latest turns fill the
            # window (a long last reply, a small context), they are dropped, newest
            # first, as the mid-run context check drops the turn that overflows.
            reserve = min(self.max_tokens, max(256, self.backend.context_length // 8))
            summary_tokens = self._tokens(prompt) + self.backend.message_overhead
            while (
                len(state.messages) > 1
                and self._prompt_tokens(self._view(state, _without_trailing_result(state.messages)))
                + summary_tokens
                + reserve
                > self.backend.context_length
            ):
                yield TurnRolledBack(state.turn, "turn", "context_full", "the summary would not fit the context window")
                reason = "context_full"
            if len(state.messages) > 1 and state.messages[-1].role == "user":
                # The reference drops a trailing tool result before asking for the summary.
                dropped = state.turn
        yield SummaryStarted(reason, prompt, dropped)  # type: ignore[arg-type]
        final_text = ""
        answer = ""
        retries = max(1, self.settings.summary_retries)
        for attempt in range(1, retries + 1):
            reply = yield from self._generate(state, state.turn + 1, "summary", attempt)
            final_text = reply.text
            yield reply_ended(state.turn + 1, "summary", reply, reply.text, 0)
            answer = extract_boxed(reply.text)
            if answer:
                break
            if attempt < retries:
                yield TurnRolledBack(state.turn + 1, "summary", "no_boxed", "the summary has no \\boxed{} answer")
        if not answer and state.intermediate_answers and plan.fallback_to_intermediate:
            answer = state.intermediate_answers[-1]
            yield Notice(
                "warning", "the summary had no \\boxed{} answer; using the last answer the model boxed earlier"
            )
        return (answer or None), final_text


def _without_trailing_result(messages: list[ChatMessage]) -> list[ChatMessage]:
    """The history as the summary will see it: a trailing tool result is dropped first."""
    if len(messages) > 1 and messages[-1].role == "user":
        return messages[:-1]
    return messages
