"""Streamed reply text split into what the UI shows: thinking, said text, and hidden tool-call XML.

A reply streams in arbitrary pieces, so a tag can arrive cut in two
("<thi" + "nk>"): the splitter holds back a tail that could still become a tag.
The tool call itself is shown by its own widget, so its XML is dropped here.
Pure and incremental; no textual import (tested with plain asserts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SegmentKind = Literal["think", "text", "rethink"]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TOOL_OPEN = "<use_mcp_tool>"
TOOL_CLOSE = "</use_mcp_tool>"


@dataclass(frozen=True)
class Segment:
    """A piece of thinking or said text. `rethink`: everything shown as text so far was thinking.

    Thinking models whose chat template opens <think> in the prompt stream only
    the closing tag; the text before it turns out to be thinking.
    """

    kind: SegmentKind
    text: str = ""


def _held_tail(data: str, tags: tuple[str, ...]) -> int:
    """Length of the longest end of `data` that is the start of one of `tags` (a tag cut by the stream)."""
    longest = 0
    for tag in tags:
        for size in range(min(len(tag) - 1, len(data)), longest, -1):
            if data.endswith(tag[:size]):
                longest = size
                break
    return longest


class ReplySplitter:
    """Feed pieces with `feed`, then call `finish`; each returns the segments ready to show."""

    def __init__(self) -> None:
        self.state: Literal["text", "think", "tool"] = "text"
        self._after_tool: Literal["text", "think"] = "text"
        self._held = ""
        self._seen_think = False

    def _tags(self) -> tuple[str, ...]:
        if self.state == "tool":
            return (TOOL_CLOSE,)
        if self.state == "think":
            return (THINK_CLOSE, TOOL_OPEN)
        if self._seen_think:
            return (THINK_OPEN, TOOL_OPEN)
        return (THINK_OPEN, THINK_CLOSE, TOOL_OPEN)

    def feed(self, piece: str) -> list[Segment]:
        data = self._held + piece
        self._held = ""
        out: list[Segment] = []
        while data:
            tags = self._tags()
            found = [(data.find(tag), tag) for tag in tags]
            hits = [(index, tag) for index, tag in found if index >= 0]
            if not hits:
                keep = _held_tail(data, tags)
                self._emit(out, data[: len(data) - keep])
                self._held = data[len(data) - keep :]
                break
            index, tag = min(hits)
            self._emit(out, data[:index])
            data = data[index + len(tag) :]
            self._switch(tag, out)
        return out

    def finish(self) -> list[Segment]:
        out: list[Segment] = []
        self._emit(out, self._held)
        self._held = ""
        return out

    def _emit(self, out: list[Segment], text: str) -> None:
        if not text or self.state == "tool":
            return
        kind: SegmentKind = "think" if self.state == "think" else "text"
        if out and out[-1].kind == kind:
            out[-1] = Segment(kind, out[-1].text + text)
        else:
            out.append(Segment(kind, text))

    def _switch(self, tag: str, out: list[Segment]) -> None:
        if tag == THINK_OPEN:
            self.state, self._seen_think = "think", True
        elif tag == THINK_CLOSE:
            if self.state == "text":
                # An orphan closing tag: the reply began inside <think> (opened by the prompt).
                self._seen_think = True
                out.append(Segment("rethink"))
            self.state = "text"
        elif tag == TOOL_OPEN:
            self._after_tool = "think" if self.state == "think" else "text"
            self.state = "tool"
        elif tag == TOOL_CLOSE:
            self.state = self._after_tool


def split_reply(content: str) -> tuple[str, str]:
    """(thinking, said text) of a whole reply, by the same rules as the streaming splitter."""
    splitter = ReplySplitter()
    thinking: list[str] = []
    said: list[str] = []
    for segment in [*splitter.feed(content), *splitter.finish()]:
        if segment.kind == "rethink":
            thinking.extend(said)
            said.clear()
        elif segment.kind == "think":
            thinking.append(segment.text)
        else:
            said.append(segment.text)
    return "".join(thinking).strip(), "".join(said).strip()
