"""The UI's pure parts: splitting streamed replies, batching events across threads, the status line."""

from __future__ import annotations

import threading
import time

import pytest

from appliance.agent.events import (
    AgentEvent,
    RunFinished,
    RunStarted,
    TextDelta,
    ToolCallStarted,
    TurnEnded,
    TurnStarted,
)
from appliance.tui import format as fmt
from appliance.tui.batching import EventBatcher
from appliance.tui.meter import RunMeter
from appliance.tui.statusbar import fit_parts
from appliance.tui.stream import ReplySplitter, Segment, split_reply
from tests.conftest import tool_call

REPLY = (
    "<think>\nFirst I search.\n</think>\n\nI will search now.\n"
    + tool_call("search_and_scrape_webpage", "google_search", {"q": "a < b"}).split("\n\n", 1)[1]
    + "\nafter"
)


def feed_in_pieces(text: str, size: int) -> list[Segment]:
    splitter = ReplySplitter()
    out: list[Segment] = []
    for i in range(0, len(text), size):
        out += splitter.feed(text[i : i + size])
    return out + splitter.finish()


def joined(segments: list[Segment]) -> dict[str, str]:
    result = {"think": "", "text": ""}
    for segment in segments:
        if segment.kind == "rethink":
            result["think"] += result["text"]
            result["text"] = ""
        else:
            result[segment.kind] += segment.text
    return result


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 16, 1000])
def test_splitter_gives_the_same_result_whatever_the_piece_size(size: int) -> None:
    parts = joined(feed_in_pieces(REPLY, size))
    assert parts["think"].strip() == "First I search."
    assert parts["text"].strip() == "I will search now.\n\nafter"
    assert "use_mcp_tool" not in parts["text"] and "<" not in parts["text"].replace("a < b", "")


def test_orphan_closing_think_tag_turns_earlier_text_into_thinking() -> None:
    # Thinking models whose template opens <think> in the prompt stream only the closing tag.
    reply = "reasoning here\n</think>\n\nThe answer."
    for size in (1, 4, 100):
        parts = joined(feed_in_pieces(reply, size))
        assert parts["think"].strip() == "reasoning here"
        assert parts["text"].strip() == "The answer."
    assert split_reply(reply) == ("reasoning here", "The answer.")


def test_tool_call_inside_thinking_is_hidden_and_thinking_resumes() -> None:
    call = tool_call("s", "t", {}).split("\n\n", 1)[1]
    reply = f"<think>a {call} b</think>c"
    assert split_reply(reply) == ("a  b", "c")


def test_text_that_looks_like_a_tag_start_is_not_lost() -> None:
    assert split_reply("x <thin y") == ("", "x <thin y")
    assert split_reply("<think>x</think>a <b> c") == ("x", "a <b> c")
    assert joined(feed_in_pieces("trailing <", 3))["text"] == "trailing <"


def test_batcher_merges_text_keeps_order_and_flushes_other_events_at_once() -> None:
    batches: list[tuple[AgentEvent, ...]] = []
    posted = threading.Event()

    def post(batch: tuple[AgentEvent, ...]) -> None:
        batches.append(batch)
        posted.set()

    batcher = EventBatcher(post, interval=0.2)
    batcher.add(TurnStarted(1, "turn", 10))
    assert posted.wait(1)  # a non-text event goes out without waiting for the interval
    for piece in ["a", "b", "c"]:
        batcher.add(TextDelta(1, piece))
    started = time.monotonic()
    batcher.add(ToolCallStarted(1, 0, "s", "t", {}))
    batcher.add(TextDelta(2, "d"))
    batcher.add(TextDelta(2, "e"))
    batcher.close()
    assert time.monotonic() - started < 1
    events = [e for batch in batches for e in batch]
    assert events == [
        TurnStarted(1, "turn", 10),
        TextDelta(1, "abc"),
        ToolCallStarted(1, 0, "s", "t", {}),
        TextDelta(2, "de"),
    ]


def test_batcher_hands_text_over_about_every_interval_and_not_per_token() -> None:
    batches: list[tuple[AgentEvent, ...]] = []
    batcher = EventBatcher(batches.append, interval=0.05)
    end = time.monotonic() + 0.6
    sent = 0
    while time.monotonic() < end:
        batcher.add(TextDelta(1, "x"))
        sent += 1
        time.sleep(0.001)
    batcher.close()
    text = "".join(e.text for batch in batches for e in batch if isinstance(e, TextDelta))
    assert text == "x" * sent
    # ~0.6 s at one batch per 50 ms: about 12 batches, far fewer than the tokens.
    assert 5 <= len(batches) <= 20 < sent


def test_batcher_delivers_a_pause_s_last_words_within_the_interval() -> None:
    got = threading.Event()
    batcher = EventBatcher(lambda batch: got.set(), interval=0.05)
    batcher.add(TextDelta(1, "first"))
    assert got.wait(0.5)
    got.clear()
    batcher.add(TextDelta(1, "then a pause"))
    assert got.wait(0.5)  # no next token needed to flush it
    batcher.close()


def test_meter_follows_a_run() -> None:
    meter = RunMeter()
    meter.begin(live=True, now=100.0)
    meter.apply(RunStarted("r", "t", "t", "s", {"profile": "gpu-8b", "agent": {"max_turns": 50}},
                           {"model": "m.gguf", "context_length": 40000}), 100.0)  # fmt: skip
    meter.apply(TurnStarted(3, "turn", 10000), 101.0)
    meter.apply(TextDelta(3, "word " * 10), 101.0)
    meter.apply(TextDelta(3, "word " * 10), 102.0)
    assert meter.tokens_per_s == pytest.approx(40.0)  # 40 approximate tokens in one second
    meter.apply(TurnEnded(3, "turn", "", "stop", 10000, 120, 10, 4.0, 1), 104.0)
    assert meter.text(105.0) == "● running │ gpu-8b │ m.gguf │ step 3/50 │ ctx 10k/40k 25% │ 30.0 tok/s │ 0:05"
    meter.apply(TurnStarted(4, "summary", 10100), 106.0)
    assert "step 3/50 · final answer" in meter.text(106.0)
    meter.apply(RunFinished("r", "answered", "x", "", 3, 2, 1, 1, 83.0), 107.0)
    assert meter.text(500.0).endswith("│ 1:23") and meter.state == "answered"


def test_status_line_fits_narrow_terminals() -> None:
    parts = [
        ("state-running", "● running"),
        ("profile", "cpu-30b-a3b"),
        ("model", "MiroThinker-v1.0-30B-Q4_K_M.gguf"),
        ("step", "step 12/600"),
        ("context", "ctx 20k/32.8k 61%"),
        ("speed", "12.5 tok/s"),
        ("clock", "3:02"),
    ]
    wide = fit_parts(parts, 200)
    assert wide == parts
    medium = fit_parts(parts, 100)
    assert [r for r, _ in medium] == [r for r, _ in parts] and medium[2][1].endswith("…")
    narrow = fit_parts(parts, 70)
    assert [r for r, _ in narrow] == ["state-running", "profile", "step", "context", "clock"]
    narrower = fit_parts(parts, 60)
    assert [r for r, _ in narrower] == ["state-running", "step", "context", "clock"]
    tiny = fit_parts(parts, 25)
    assert [r for r, _ in tiny] == ["state-running", "step"]


def test_formatting() -> None:
    assert [fmt.duration(s) for s in (0.04, 9.96, 12.2, 125, 3720)] == ["0.0s", "10.0s", "12s", "2m05s", "1h02m"]
    assert [fmt.clock(s) for s in (7, 754, 3723)] == ["0:07", "12:34", "1:02:03"]
    counts = [fmt.count(n) for n in (950, 12_300, 32_768, 262_144, 1_200_000)]
    assert counts == ["950", "12.3k", "32.8k", "262k", "1.2M"]
    # A control character shows as a visible escape: nothing hidden, nothing obeyed.
    assert fmt.tool_subject("google_search", {"q": "a\x1b[31m b\nc", "num": 3}) == "a\\x1b[31m b c"
    assert fmt.tool_subject("run_python_code", {"code_block": "x = 1\nprint(x)"}) == "x = 1 print(x)"
    assert fmt.search_preview('{"organic": []}') == "(no results)"
    assert fmt.search_preview("not json") is None
    preview, left = fmt.result_preview("line\n" * 100, max_lines=3)
    assert preview == "line\nline\nline" and left == 500 - 14
    assert fmt.split_error("model file x not found. Fix: run `appliance install`") == (
        "model file x not found",
        "run `appliance install`",
    )


def test_the_ui_uses_no_private_textual_api() -> None:
    """Private Textual names change between releases without notice; public routes exist for ours."""
    import re
    from pathlib import Path

    private = re.compile(r"textual(?:\.\w+)*\._\w+|\b_(?:watch|update)_collapsed\b|\._compositor\b")
    ui = Path(__file__).resolve().parents[1] / "appliance" / "tui"
    found = {p.name: private.findall(p.read_text(encoding="utf-8")) for p in ui.glob("*.py")}
    assert {name: hits for name, hits in found.items() if hits} == {}


@pytest.mark.asyncio
async def test_a_quiet_collapsible_keeps_the_scroll_when_changed_from_code() -> None:
    from textual.app import App, ComposeResult
    from textual.containers import VerticalScroll
    from textual.widgets import Static

    from appliance.tui.base import QuietCollapsible

    class Folding(App[None]):
        def compose(self) -> ComposeResult:
            with VerticalScroll(id="scroll"):
                yield QuietCollapsible(Static("inside\n" * 5), title="top", collapsed=True, id="top")
                yield Static("filler\n" * 80)

    app = Folding()
    async with app.run_test(size=(40, 10)) as pilot:
        scroll = app.query_one("#scroll", VerticalScroll)
        scroll.scroll_end(animate=False)
        await pilot.pause()
        bottom = scroll.scroll_y
        assert bottom > 0
        app.query_one("#top", QuietCollapsible).collapsed = False  # from code: the view stays put
        await pilot.pause()
        await pilot.pause()
        assert scroll.scroll_y == bottom
        top = app.query_one("#top", QuietCollapsible)
        top.query_one("CollapsibleTitle").focus()
        await pilot.pause()
        scroll.scroll_end(animate=False)
        await pilot.pause()
        expanded_bottom = scroll.scroll_y
        assert expanded_bottom >= bottom
        top.collapsed = True  # the user's toggle (the focus is on it): it comes into view
        await pilot.pause()
        await pilot.pause()
        assert scroll.scroll_y < bottom


def test_status_values_take_the_width_the_terminal_gives() -> None:
    from appliance.tui.status_screen import config_widths

    assert config_widths(80) == (25, 26, 19)  # narrow: the value keeps its minimum
    key, value, origin = config_widths(160)
    assert (key, origin) == (25, 26) and value == 160 - key - origin - 10
    assert config_widths(200)[1] > config_widths(160)[1]
