r"""A follow-up question on a finished run: a new run that starts where its parent left off.

The new run's context is its parent's conversation as the model last saw it
(the system prompt, the task, every assistant turn, the last-K results and the
final answer turn: agent.context.last_seen_conversation), then the question as
a new user message with the reference's \boxed{} instruction. The parent's
part is shown exactly as recorded (never trimmed again), so on a local model
its KV cache prefix is still valid and only the question is evaluated.

A conversation that would not leave room for work starts instead from the
parent's report (its answer, findings and sources, store/report.py) as one
earlier exchange. "Room for work" is `fits_conversation`: the first prompt plus
two full replies ([model] max_tokens each: a turn of work and the answer) must
fit the context window.

The store and the session find the parent and build these messages; this
module holds what the run itself needs to know (FollowUp) and the pure rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from appliance.agent.events import Notice
from appliance.llm.base import Backend, ChatMessage
from appliance.protocol.prompt import render_task_message

ContextMode = Literal["conversation", "report"]

# Replies the first prompt must leave room for: one turn of work and the answer.
REPLIES_OF_ROOM = 2


@dataclass(frozen=True)
class FollowUp:
    """What a follow-up run starts from (every attempt of it starts from the same)."""

    parent_run: str
    mode: ContextMode
    context: tuple[ChatMessage, ...]
    # The parent's system prompt in conversation mode (its conversation is continued as it was);
    # "" renders today's, as for any new run.
    system_prompt: str = ""

    def notice(self, parent_tokens: int, context_length: int) -> str:
        """What the faces say about how the follow-up starts."""
        if self.mode == "conversation":
            return f"follow-up of run {self.parent_run}: continuing its conversation ({parent_tokens} tokens)"
        return (
            f"follow-up of run {self.parent_run}: its conversation ({parent_tokens} tokens) would not leave room "
            f"for work in the {context_length}-token context window, so this run starts from its report "
            "(answer, findings, sources)"
        )


@dataclass(frozen=True)
class FollowUpSource:
    """The parent, as the store hands it over: its conversation (system prompt first) and its report context."""

    parent_run: str
    conversation: tuple[ChatMessage, ...]
    report: tuple[ChatMessage, ...]


def choose_start(source: FollowUpSource, backend: Backend, question: str, max_tokens: int) -> tuple[FollowUp, Notice]:
    """How the follow-up starts (its conversation when there is room, else the report), and the notice saying so."""
    system, *conversation = source.conversation
    first_prompt = [*source.conversation, ChatMessage("user", render_task_message(question))]
    prompt_tokens = backend.count_messages(first_prompt)
    parent_tokens = backend.count_messages(source.conversation)
    if fits_conversation(prompt_tokens, backend.context_length, max_tokens):
        chosen = FollowUp(source.parent_run, "conversation", tuple(conversation), system.content)
        return chosen, Notice("info", chosen.notice(parent_tokens, backend.context_length))
    chosen = FollowUp(source.parent_run, "report", source.report)
    return chosen, Notice("warning", chosen.notice(parent_tokens, backend.context_length))


def fits_conversation(prompt_tokens: int, context_length: int, max_tokens: int) -> bool:
    """Whether a follow-up whose first prompt is `prompt_tokens` long can work in the parent's conversation."""
    return prompt_tokens + REPLIES_OF_ROOM * max_tokens <= context_length
