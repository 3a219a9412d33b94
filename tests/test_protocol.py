"""The wire format, pinned by golden files produced with the reference agent's own code.

tests/golden/system_prompt_*.txt and summary_prompt.txt were rendered by
MiroMindAI/MiroThinker's prompt_utils.py from the tool listing its MCP servers
report (tests/golden/reference_tool_listing.json); the replies' expected calls
were checked against the reference parser (see tests/golden/README.md).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from appliance.protocol.answer import extract_boxed, unbox
from appliance.protocol.parsing import (
    fix_server_names,
    has_mcp_tags,
    parse_tool_calls,
    query_key,
    refusal_phrase,
    repair_arguments,
    split_thinking,
    tool_server_map,
)
from appliance.protocol.prompt import TASK_SUFFIX, render_summary_prompt, render_system_prompt, render_task_message
from appliance.protocol.tooldefs import ServerSpec
from appliance.tools import specs

GOLDEN = Path(__file__).parent / "golden"
DATE = dt.date(2025, 11, 26)


def servers(*, with_download: bool = False, python_only: bool = False) -> list[ServerSpec]:
    python = tuple(t for t in specs.PYTHON_TOOLS if with_download or t.name != "download_file_from_sandbox_to_local")
    result = [ServerSpec(specs.PYTHON_SERVER, python)]
    if not python_only:
        result += [
            ServerSpec(specs.SEARCH_SERVER, specs.SEARCH_TOOLS),
            ServerSpec(specs.SCRAPE_SERVER, specs.SCRAPE_TOOLS),
        ]
    return result


@pytest.mark.parametrize(
    ("golden", "kwargs"),
    [
        ("system_prompt_v1.txt", {}),
        ("system_prompt_with_download.txt", {"with_download": True}),
        ("system_prompt_python_only.txt", {"python_only": True}),
    ],
)
def test_system_prompt_matches_reference_byte_for_byte(golden: str, kwargs: dict[str, bool]) -> None:
    expected = (GOLDEN / golden).read_text(encoding="utf-8")
    assert render_system_prompt(DATE, servers(**kwargs)) == expected


def test_system_prompt_carries_the_date_and_every_tool() -> None:
    text = render_system_prompt(dt.date(2031, 2, 3), servers())
    assert "Today is: 2031-02-03" in text
    assert text.count("### Tool name:") == 7
    assert "download_file_from_sandbox_to_local" not in text
    assert text.endswith("using additional tools.")


def test_tool_specs_are_the_reference_listing() -> None:
    listing = json.loads((GOLDEN / "reference_tool_listing.json").read_text(encoding="utf-8"))
    by_server = {s["name"]: s["tools"] for s in listing}
    ours = {
        specs.PYTHON_SERVER: specs.PYTHON_TOOLS,
        specs.SEARCH_SERVER: specs.SEARCH_TOOLS,
        specs.SCRAPE_SERVER: specs.SCRAPE_TOOLS,
    }
    for server, tools in ours.items():
        reference = [t for t in by_server[server] if t["name"] != "sogou_search"]
        assert [t.name for t in tools] == [t["name"] for t in reference]
        for tool, ref in zip(tools, reference, strict=True):
            assert tool.description == ref["description"]
            assert tool.input_schema == ref["schema"]
            # key order is part of the printed repr
            assert list(tool.input_schema) == list(ref["schema"])
            assert list(tool.input_schema.get("properties", {})) == list(ref["schema"].get("properties", {}))


def test_summary_prompt_matches_reference() -> None:
    expected = (GOLDEN / "summary_prompt.txt").read_text(encoding="utf-8")
    assert render_summary_prompt("How many moons does Mars have? Answer with a number.") == expected


def test_task_message_suffix_and_attachments() -> None:
    assert render_task_message("What is 2+2?") == "What is 2+2?" + TASK_SUFFIX
    assert TASK_SUFFIX.endswith("wrap the final answer in \\boxed{}.")
    with_file = render_task_message("Sum column B.", ["/data/sales.xlsx"])
    assert with_file.startswith("Sum column B." + TASK_SUFFIX + "\n\nNote: A file '/data/sales.xlsx'")
    assert with_file.endswith("please upload it to the sandbox first.")


# ---------------------------------------------------------------- parsing


def test_replies_parse_as_the_golden_file_says() -> None:
    expected = json.loads((GOLDEN / "replies" / "expected_calls.json").read_text(encoding="utf-8"))
    mapping = tool_server_map((GOLDEN / "system_prompt_v1.txt").read_text(encoding="utf-8"))
    assert mapping == {
        "run_python_code": "tool-python",
        "google_search": "search_and_scrape_webpage",
        "scrape_and_extract_info": "jina_scrape_llm_summary",
    }
    assert len(expected) == len(list((GOLDEN / "replies").glob("*.txt")))
    for name, calls in expected.items():
        text = (GOLDEN / "replies" / name).read_text(encoding="utf-8")
        parsed = parse_tool_calls(fix_server_names(text, mapping))
        got = [
            {
                "server": c.server,
                "tool": c.tool,
                "arguments": c.arguments,
                "error": c.error,
                "repaired_by": c.repaired_by,
            }
            for c in parsed
        ]
        assert got == calls, name


def test_wrong_server_and_python_alias_are_corrected() -> None:
    text = (GOLDEN / "replies" / "wrong_server_and_python_alias.txt").read_text(encoding="utf-8")
    mapping = {"run_python_code": "tool-python"}
    fixed = fix_server_names(text, mapping)
    assert "<server_name>tool-python</server_name>" in fixed
    assert "<tool_name>run_python_code</tool_name>" in fixed
    (call,) = parse_tool_calls(fixed)
    # None-valued arguments are dropped, `code` becomes `code_block`, a missing
    # sandbox id means "stateless" as in the reference.
    assert call.arguments == {"code_block": "print(1+1)", "verbose": True, "sandbox_id": "default"}


def test_unknown_tools_are_left_alone_by_the_server_fix() -> None:
    text = (
        "<use_mcp_tool><server_name>x</server_name><tool_name>mystery</tool_name>"
        "<arguments>{}</arguments></use_mcp_tool>"
    )
    assert fix_server_names(text, {"google_search": "search_and_scrape_webpage"}) == text


@pytest.mark.parametrize(
    ("raw", "expected", "step"),
    [
        ('{"a": 1}', {"a": 1}, "json"),
        ("{'a': 'b', 'c': None, 'd': True}", {"a": "b", "c": None, "d": True}, "common"),
        ('{"path": "C:\\Users\\x"}', {"path": "C:\\Users\\x"}, "backslashes"),
        ('{"a": "b",}', {"a": "b"}, "json_repair"),
        ('{"q": "unterminated', {"q": "unterminated"}, "json_repair"),
        ("", {}, "json"),
    ],
)
def test_repair_chain(raw: str, expected: dict[str, object], step: str) -> None:
    assert repair_arguments(raw) == (expected, step)


@pytest.mark.parametrize("raw", ["not json", "[1, 2, 3]", '"a string"', "42"])
def test_repair_chain_refuses_non_objects(raw: str) -> None:
    arguments, reason = repair_arguments(raw)
    assert arguments is None
    assert "JSON object" in reason


def test_format_error_and_refusal_detection() -> None:
    unclosed = (GOLDEN / "replies" / "unclosed_tags.txt").read_text(encoding="utf-8")
    assert parse_tool_calls(unclosed) == []
    assert has_mcp_tags(unclosed)
    assert not has_mcp_tags("plain text with \\boxed{1}")
    assert refusal_phrase("Due to time constraint I stop here.") == "time constraint"
    assert refusal_phrase("All good.") is None


def test_query_keys_for_duplicate_detection() -> None:
    assert query_key("google_search", {"q": "mars moons", "num": 10}) == "google_search_mars moons"
    assert query_key("scrape_and_extract_info", {"url": "https://a", "info_to_extract": "x"}) == (
        "scrape_and_extract_info_https://a_x"
    )
    assert query_key("run_python_code", {"code_block": "1"}) is None


def test_split_thinking() -> None:
    assert split_thinking("<think>\nhmm\n</think>\n\nAnswer") == ("hmm", "Answer")
    assert split_thinking("no thoughts") == ("", "no thoughts")
    assert split_thinking("<think>still going") == ("still going", "")


# ---------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("\\boxed{42}", "42"),
        ("first \\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{ {a}, {b} }", "{a}, {b}"),
        ("\\boxed {spaced}", "spaced"),
        ("escaped \\boxed{a \\} b}", "a \\} b"),
        ("cut off \\boxed{Paris, Fr", "Paris, Fr"),
        ("\\boxed{?}", ""),
        ("\\boxed{unknown}", ""),
        ("no box here", ""),
        ("\\boxed{}", ""),
        ("\\boxedx{3} \\boxed{4}", "4"),
    ],
)
def test_extract_boxed(text: str, answer: str) -> None:
    assert extract_boxed(text) == answer


def test_extract_boxed_from_the_golden_final_answer() -> None:
    assert extract_boxed((GOLDEN / "replies" / "final_answer.txt").read_text(encoding="utf-8")) == "2"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("The answer is \\boxed{2}.", "The answer is 2."),
        ("\\boxed{ a {b} } then \\boxed {c}", "a {b} then c"),
        ("no box at all", "no box at all"),
        ("\\boxed without brace", "\\boxed without brace"),
        ("cut off \\boxed{Pho", "cut off Pho"),
        ("Two moons.\n\n\\boxed{2}\n", "Two moons."),  # alone on its line: the answer panel shows it
        ("Two moons.\n  \\boxed{2}  \nSources below.", "Two moons.\n    \nSources below."),
    ],
)
def test_unbox_writes_each_box_as_its_content(text: str, shown: str) -> None:
    assert unbox(text) == shown
