"""An attached file in the task message, as the reference inlines it.

The reference (src/io/input_handler.py process_input, 370f983) converts the
task's file to text and appends, after the task and its \\boxed{} suffix, a
note that depends on the file's type, a header, and the text in a fence,
capped at 200,000 characters with "\\n... [File truncated]". Files it reads
through a captioning model (images, audio, video) have no text here: they get
the plain note that asks the model to use its tools, as do files that cannot
be converted. Pure: the conversion happens in appliance.tools.attachments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

FILE_MAX_CHARS = 200_000
FILE_TRUNCATED = "\n... [File truncated]"

_NOTE_TAIL = (
    " You may use available tools to process its content if necessary. If you need to further process this "
    "file in the sandbox, please upload it to the sandbox first.\n\n"
)
_TEXT_NAMES = {"txt": "Text", "md": "Markdown", "sh": "Shell Script", "yaml": "YAML", "yml": "YAML",
               "toml": "TOML", "csv": "CSV"}  # fmt: skip

# extension -> (what the note calls the file, how its content was extracted, the section header)
_KINDS: dict[str, tuple[str, str, str]] = {
    "py": ("A Python file", "as text", "Python File"),
    **{ext: (f"A {name.lower()} file", "as text", f"{name} File") for ext, name in _TEXT_NAMES.items()},
    "json": ("A JSON file", "as JSON format", "JSON File"),
    "jsonld": ("A JSON file", "as JSON format", "JSON File"),
    "xlsx": ("An Excel file", "as a markdown table", "Excel File"),
    "xls": ("An Excel file", "as a markdown table", "Excel File"),
    "pdf": ("A PDF file", "as text", "PDF File"),
    "docx": ("A Word document", "as markdown", "Word Document"),
    "doc": ("A Word document", "as markdown", "Word Document"),
    "html": ("An HTML file", "as markdown", "HTML File"),
    "htm": ("An HTML file", "as markdown", "HTML File"),
    "pptx": ("A PowerPoint presentation", "as markdown", "PowerPoint Presentation"),
    "ppt": ("A PowerPoint presentation", "as markdown", "PowerPoint Presentation"),
}
# Any other file the reference converts goes through MarkItDown, under this note.
_OTHER = ("A file", "as markdown", "File Content")


def extension(path: str) -> str:
    """The reference's file type: the text after the last dot, lower case."""
    return path.rsplit(".", maxsplit=1)[-1].lower()


@dataclass(frozen=True)
class InlineFile:
    """An attached file's text, ready to inline. `title` only when the converter found a real one.

    `max_chars` is at most the reference's 200,000; appliance.tools.attachments lowers it so one
    file cannot fill a small context window.
    """

    path: str
    text: str
    title: str = ""
    max_chars: int = FILE_MAX_CHARS


@dataclass(frozen=True)
class UnreadableFile:
    """An attached file whose conversion failed: the reference says so in the task."""

    path: str
    error: str


def attachment_note(path: str) -> str:
    """The note for a file without inlined text: the model is told to read it with its tools."""
    return (
        f"\n\nNote: A file '{path}' is associated with this task. You may use available tools "
        "to read its content if necessary. If you need to further process this file in the "
        "sandbox, please upload it to the sandbox first.\n\n"
    )


def cut_to(text: str, max_chars: int) -> str:
    """The reference's cap: at most `max_chars` characters, then the truncation mark."""
    return text if len(text) <= max_chars else text[:max_chars] + FILE_TRUNCATED


def render_inline_file(file: InlineFile) -> str:
    """Note, header and fenced text of one attached file, byte for byte as the reference writes them.

    (The reference does not cap a titled document; here every text is capped.)
    """
    what, how, header = _KINDS.get(extension(file.path), _OTHER)
    section = (
        f"\n\nNote: {what} '{file.path}' is associated with this task. The content has been extracted {how} below."
    )
    section += _NOTE_TAIL + f"## {header}\nFile: {file.path}\n\n"
    text = cut_to(file.text, min(file.max_chars, FILE_MAX_CHARS))
    if file.title:
        return section + f"Title:\n\n{file.title}\n\nContent:\n\n```\n{text}\n```\n"
    return section + f"```\n{text}\n```\n"


def render_unreadable_file(file: UnreadableFile) -> str:
    return f"\nWarning: There was an error processing the file '{file.path}': {file.error}"


def is_inlined_kind(path: str) -> bool:
    """Whether the reference inlines this type's text (not captioned media, not a PDB or archive)."""
    return extension(path) in _KINDS or PurePath(path).suffix.lower() not in _NOT_INLINED


# Types the reference does not inline as text: captioned media (a vision or audio model
# it has and the appliance does not), protein databases, and archives (its own zip walker).
_NOT_INLINED = frozenset({
    ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tiff", ".tif", ".svg", ".heic",
    ".mp3", ".wav", ".m4a", ".flac", ".ogg", ".aac", ".mp4", ".mov", ".avi", ".mkv", ".webm",
    ".pdb", ".zip",
})  # fmt: skip
