r"""System prompt, task message and summary prompt, exactly as the reference renders them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from appliance.protocol.attachments import (
    InlineFile,
    UnreadableFile,
    attachment_note,
    render_inline_file,
    render_unreadable_file,
)
from appliance.protocol.tooldefs import ServerSpec

TASK_SUFFIX = (
    "\nYou should follow the format instruction in the request strictly and wrap the final answer in \\boxed{}."
)

_MCP_PREAMBLE = """In this environment you have access to a set of tools you can use to answer the user's question. 

You only have access to the tools provided below. You can only use one tool per message, and will receive the result of that tool in the user's next response. You use tools step-by-step to accomplish a given task, with each tool-use informed by the result of the previous tool-use. Today is: {date}

# Tool-Use Formatting Instructions 

Tool-use is formatted using XML-style tags. The tool-use is enclosed in <use_mcp_tool></use_mcp_tool> and each parameter is similarly enclosed within its own set of tags.

The Model Context Protocol (MCP) connects to servers that provide additional tools and resources to extend your capabilities. You can use the server's tools via the `use_mcp_tool`.

Description: 
Request to use a tool provided by a MCP server. Each MCP server can provide multiple tools with different capabilities. Tools have defined input schemas that specify required and optional parameters.

Parameters:
- server_name: (required) The name of the MCP server providing the tool
- tool_name: (required) The name of the tool to execute
- arguments: (required) A JSON object containing the tool's input parameters, following the tool's input schema, quotes within string must be properly escaped, ensure it's valid JSON

Usage:
<use_mcp_tool>
<server_name>server name here</server_name>
<tool_name>tool name here</tool_name>
<arguments>
{{
"param1": "value1",
"param2": "value2 \\"escaped string\\""
}}
</arguments>
</use_mcp_tool>

Important Notes:
- Tool-use must be placed **at the end** of your response, **top-level**, and not nested within other tags.
- Always adhere to this format for the tool use to ensure proper parsing and execution.

String and scalar parameters should be specified as is, while lists and objects should use JSON format. Note that spaces for string values are not stripped. The output is not expected to be valid XML and is parsed with regular expressions.
Here are the functions available in JSONSchema format:

"""  # noqa: W291 - the reference has trailing spaces on two lines; the model saw them

_GENERAL_OBJECTIVE = """
# General Objective

You accomplish a given task iteratively, breaking it down into clear steps and working through them methodically.

"""

_MAIN_AGENT_OBJECTIVE = """# Agent Specific Objective

You are a task-solving agent that uses tools step-by-step to answer the user's question. Your goal is to provide complete, accurate and well-reasoned answers using additional tools."""


def render_mcp_prompt(date: dt.date, servers: Sequence[ServerSpec]) -> str:
    """The tool-listing part of the system prompt (the reference's MCP prompt)."""
    text = _MCP_PREAMBLE.format(date=date.strftime("%Y-%m-%d"))
    for server in servers:
        text += f"\n## Server name: {server.name}\n"
        for tool in server.tools:
            text += f"### Tool name: {tool.name}\n"
            text += f"Description: {tool.description}\n"
            # The reference prints the schema with str(dict): a Python repr.
            text += f"Input JSON schema: {tool.input_schema}\n"
    return text + _GENERAL_OBJECTIVE


def render_system_prompt(date: dt.date, servers: Sequence[ServerSpec]) -> str:
    """The main agent's system prompt: MCP listing, then its specific objective."""
    return (render_mcp_prompt(date, servers) + _MAIN_AGENT_OBJECTIVE).strip()


def render_task_message(task: str, attachments: Iterable[str | InlineFile | UnreadableFile] = ()) -> str:
    r"""The first user message: the task, the \boxed{} instruction, then each attached file:
    its text inlined (InlineFile), an error (UnreadableFile), or a note to read it with the tools (a path)."""
    text = task + TASK_SUFFIX
    for attached in attachments:
        if isinstance(attached, InlineFile):
            text += render_inline_file(attached)
        elif isinstance(attached, UnreadableFile):
            text += render_unreadable_file(attached)
        else:
            text += attachment_note(attached)
    return text.strip()


def render_summary_prompt(task: str) -> str:
    """The prompt that ends the loop and asks for the final answer in \\boxed{}."""
    return (
        "Summarize the above conversation, and output the FINAL ANSWER to the original question.\n\n"
        "If a clear answer has already been provided earlier in the conversation, do not rethink or recalculate it — "
        "simply extract that answer and reformat it to match the required format below.\n"
        "If a definitive answer could not be determined, make a well-informed educated guess based on the conversation.\n\n"
        "The original question is repeated here for reference:\n\n"
        f'"{task}"\n\n'
        "Wrap your final answer in \\boxed{}.\n"
        "Your final answer should be:\n"
        "- a number, OR\n"
        "- as few words as possible, OR\n"
        "- a comma-separated list of numbers and/or strings.\n\n"
        "ADDITIONALLY, your final answer MUST strictly follow any formatting instructions in the original question — "
        "such as alphabetization, sequencing, units, rounding, decimal places, etc.\n"
        "If you are asked for a number, express it numerically (i.e., with digits rather than words), don't use commas, and DO NOT INCLUDE UNITS such as $ or USD or percent signs unless specified otherwise.\n"
        "If you are asked for a string, don't use articles or abbreviations (e.g. for cities), unless specified otherwise. Don't output any final sentence punctuation such as '.', '!', or '?'.\n"
        "If you are asked for a comma-separated list, apply the above rules depending on whether the elements are numbers or strings.\n"
        "Do NOT include any punctuation such as '.', '!', or '?' at the end of the answer.\n"
        "Do NOT include any invisible or non-printable characters in the answer output.\n\n"
        "You must absolutely not perform any MCP tool call, tool invocation, search, scrape, code execution, or similar actions.\n"
        "You can only answer the original question based on the information already retrieved and your own internal knowledge.\n"
        "If you attempt to call any tool, it will be considered a mistake."
    ).strip()
