"""Model backends behind one small streaming interface."""

from appliance.llm.base import Backend, ChatMessage, Completion, TextChunk

__all__ = ["Backend", "ChatMessage", "Completion", "TextChunk"]
