"""Attached files inlined in the task message as the reference does, within a token budget.

tests/golden/attempts/attached_files.json holds task messages rendered by the
reference's own io/input_handler.py process_input (370f983) for each file type
(see tests/golden/README.md): converters stubbed to return known text, plain
text, Python, CSV and JSON files read for real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.agent.runtime import build_toolbox, prepare_run
from appliance.config import load_settings
from appliance.llm.base import approximate_tokens
from appliance.llm.replay import ReplayBackend, ReplayTurn
from appliance.protocol.attachments import FILE_TRUNCATED, InlineFile
from appliance.protocol.prompt import render_task_message
from appliance.tools.attachments import fit_chars, inline_attachments, read_attachment

GOLDEN = json.loads((Path(__file__).parent / "golden" / "attempts" / "attached_files.json").read_text("utf-8"))
TASK = GOLDEN["task"]


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The files the golden messages were rendered from, under the same relative names."""
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("line one\nline two ``` fenced\n", encoding="utf-8")
    Path("script.py").write_text("print('hi')\n", encoding="utf-8")
    Path("table.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    Path("data.json").write_text('{"b": [1, 2], "a": "é"}', encoding="utf-8")
    Path("broken.json").write_text("{not json", encoding="utf-8")
    Path("long.md").write_text("x" * 200_010, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize("name", ["notes.txt", "script.py", "table.csv", "data.json", "broken.json", "long.md"])
def test_text_files_are_read_and_inlined_as_the_reference_does(files: Path, name: str) -> None:
    assert render_task_message(TASK, [read_attachment(Path(name))]) == GOLDEN["messages"][name]


@pytest.mark.parametrize("name", ["sheet.xlsx", "letter.docx", "page.html", "deck.pptx", "paper.odt", "report.pdf"])
def test_converted_documents_get_the_references_note_header_and_fence(name: str) -> None:
    text = "PDF TEXT of report.pdf\n\nsecond page" if name == "report.pdf" else GOLDEN["known_text"]
    title = "The Page" if name == "page.html" else ""
    assert render_task_message(TASK, [InlineFile(name, text, title)]) == GOLDEN["messages"][name]


def test_real_documents_are_converted(tmp_path: Path) -> None:
    page = tmp_path / "page.html"
    page.write_text("<html><head><title>Moons</title></head><body><p>Mars has two moons.</p></body></html>")
    read = read_attachment(page)
    assert isinstance(read, InlineFile) and read.title == "Moons" and "two moons" in read.text
    # Captioned media and directories keep the note that points the model at its tools.
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n")
    assert read_attachment(tmp_path / "photo.png") == str(tmp_path / "photo.png")
    assert read_attachment(tmp_path) == str(tmp_path)
    message = render_task_message(TASK, [read_attachment(tmp_path / "photo.png")])
    assert message.endswith(f"Note: A file '{tmp_path / 'photo.png'}' is associated with this task. You may use "
                            "available tools to read its content if necessary. If you need to further process this "
                            "file in the sandbox, please upload it to the sandbox first.")  # fmt: skip


def test_fit_chars_keeps_the_most_text_within_the_token_budget() -> None:
    text = " ".join(f"word{i}" for i in range(5000))
    keep = fit_chars(text, 1000, approximate_tokens)
    assert approximate_tokens(text[:keep]) <= 1000 < approximate_tokens(text[: keep + 40])
    assert fit_chars("short", 1000, approximate_tokens) == 5
    assert fit_chars("x" * 300_000, 10**9, approximate_tokens) == 200_000  # the reference's cap still holds


def test_attached_files_share_the_budget(tmp_path: Path) -> None:
    big = [tmp_path / f"f{i}.txt" for i in range(2)]
    for path in big:
        path.write_text(" ".join(f"w{i}" for i in range(20_000)), encoding="utf-8")
    inlined = inline_attachments(big, token_budget=2000, count_tokens=approximate_tokens)
    for attached in inlined:
        assert isinstance(attached, InlineFile)
        assert approximate_tokens(attached.text[: attached.max_chars]) <= 1000
    message = render_task_message(TASK, inlined)
    # The texts take the budget; the task, the notes and the headers come on top.
    frame = render_task_message(TASK, [InlineFile(str(path), "") for path in big])
    assert message.count(FILE_TRUNCATED) == 2
    assert approximate_tokens(message) <= 2000 + approximate_tokens(frame) + 2 * approximate_tokens(FILE_TRUNCATED)


def test_a_run_inlines_its_attachment_within_a_small_window(tmp_path: Path, appliance_home: Path) -> None:
    sheet = tmp_path / "sales.csv"
    sheet.write_text("region,amount\n" + "".join(f"r{i},{i}\n" for i in range(20_000)), encoding="utf-8")
    settings = load_settings(overrides={"model.backend": "replay", "model.context_length": 8192, "tools.enabled": []})
    backend = ReplayBackend([ReplayTurn("\\boxed{1}")], context_length=8192)
    toolbox = build_toolbox(settings, lambda: backend)
    _, state = prepare_run(settings, "Sum column amount.", backend=backend, toolbox=toolbox,
                               attachments=[sheet])  # fmt: skip
    assert f"## CSV File\nFile: {sheet}\n\n```\nregion,amount\nr0,0\n" in state.task_message
    assert state.task_message.endswith(FILE_TRUNCATED + "\n```")
    # A quarter of the window for the file's text; the task, note and header on top.
    frame = render_task_message("Sum column amount.", [InlineFile(str(sheet), "")])
    assert backend.count_tokens(state.task_message) <= 8192 // 4 + backend.count_tokens(frame) + 10
    # The sandbox still gets the whole file: the attachment stays a path the upload tool may read.
    assert state.attachments == (str(sheet),)
    toolbox.close()
