"""MiroThinker's wire format as pure functions: prompts, tool-call parsing, answers.

Nothing here does I/O. The texts reproduce the reference agent
(MiroMindAI/MiroThinker, apps/miroflow-agent) byte for byte, because the
model was trained on exactly them; golden tests in tests/golden pin them.
"""

from appliance.protocol.answer import extract_boxed
from appliance.protocol.parsing import (
    ToolCall,
    fix_server_names,
    parse_tool_calls,
    repair_arguments,
)
from appliance.protocol.prompt import (
    render_summary_prompt,
    render_system_prompt,
    render_task_message,
)
from appliance.protocol.tooldefs import ServerSpec, ToolSpec

__all__ = [
    "ServerSpec",
    "ToolCall",
    "ToolSpec",
    "extract_boxed",
    "fix_server_names",
    "parse_tool_calls",
    "render_summary_prompt",
    "render_system_prompt",
    "render_task_message",
    "repair_arguments",
]
