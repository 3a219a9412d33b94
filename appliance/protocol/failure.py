r"""The reference's task-level strings: failure summary and the enhanced task, byte for byte.

A task runs as one or more attempts. An attempt that ends without a \boxed{}
answer writes a "failure experience" summary (the prompt below, answered by
continuing a fixed assistant prefix), and the next attempt's task is the
original task followed by every summary so far (header, one item each,
footer). Source: MiroMindAI/MiroThinker 370f983, apps/miroflow-agent
src/utils/prompt_utils.py, src/utils/parsing_utils.py and
benchmarks/common_benchmark.py; pinned by tests/golden/attempts/.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# What the reference records as the answer of an attempt without a box.
FORMAT_ERROR_MESSAGE = "No \\boxed{} content found in the final answer."

FAILURE_EXPERIENCE_HEADER = """

=== Previous Attempts Analysis ===
The following summarizes what was tried before and why it didn't work. Use this to guide a NEW approach.

"""

FAILURE_EXPERIENCE_ITEM = """[Attempt {attempt_number}]
{failure_summary}

"""

FAILURE_EXPERIENCE_FOOTER = """=== End of Analysis ===

Based on the above, you should try a different strategy this time.
"""

FAILURE_SUMMARY_PROMPT = """The task was not completed successfully. Do NOT call any tools. Provide a summary:

Failure type: [incomplete / blocked / misdirected / format_missed]
  - incomplete: ran out of turns before finishing
  - blocked: got stuck due to tool failure or missing information
  - misdirected: went down the wrong path
  - format_missed: found the answer but forgot to use \\boxed{}
What happened: [describe the approach taken and why a final answer was not reached]
Useful findings: [list any facts, intermediate results, or conclusions discovered that should be reused]"""

_FAILURE_SUMMARY_THINK_CONTENT = """We need to write a structured post-mortem style summary **without calling any tools**, explaining why the task was not completed, using these required sections:

* **Failure type**: pick one from **incomplete / blocked / misdirected / format_missed**
* **What happened**: describe the approach taken and why it didn't reach a final answer
* **Useful findings**: list any facts, intermediate results, or conclusions that can be reused"""

# The start of the assistant's reply; the model continues it (a closed think block).
FAILURE_SUMMARY_ASSISTANT_PREFIX = f"<think>\n{_FAILURE_SUMMARY_THINK_CONTENT}\n</think>\n\n"

_THINK = re.compile(r"<think>([\s\S]*?)</think>")
_TOOL_CALL_TAIL = re.compile(r"<use_mcp_tool>[\s\S]*")


def render_enhanced_task(task: str, failure_summaries: Sequence[str]) -> str:
    """The task of the next attempt: rebuilt from the original task and every summary so far."""
    if not failure_summaries:
        return task
    text = task + FAILURE_EXPERIENCE_HEADER
    for number, summary in enumerate(failure_summaries, 1):
        text += FAILURE_EXPERIENCE_ITEM.format(attempt_number=number, failure_summary=summary)
    return text + FAILURE_EXPERIENCE_FOOTER


def extract_failure_summary(text: str) -> str:
    """The summary in a failure-summary reply (prefix included): the text after the first
    think block and before any tool call, or the think text when that is empty."""
    if not text:
        return ""
    think = _THINK.search(text)
    after = text[think.end() :] if think else text
    call = _TOOL_CALL_TAIL.search(after)
    content = (after[: call.start()] if call else after).strip()
    if content:
        return content
    return think.group(1).strip() if think else ""
