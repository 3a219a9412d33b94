"""The pure parts: E2B-shaped texts, caps, guidance, path rules, limits."""

from __future__ import annotations

import ast
import resource

import pytest

from appliance.tools.sandbox import formats
from appliance.tools.sandbox.bwrap import Limits
from appliance.tools.sandbox.files import PathRefused, output_name, sandbox_parts
from appliance.tools.sandbox.formats import Piece
from appliance.tools.sandbox.host import explain_failure
from appliance.tools.sandbox.transfer import looks_like_dir, url_file_name


def piece(text: str, total: int | None = None, **kw: bool) -> Piece:
    return Piece(text, len(text) if total is None else total, **kw)


def test_command_result_is_the_dataclass_repr() -> None:
    text = formats.command_result(piece("out\n"), piece("it's\x1b"), 1, "exit status 1", 100_000)
    assert text == "CommandResult(stderr=\"it's\\x1b\", stdout='out\\n', exit_code=1, error='exit status 1')"


def test_execution_is_e2bs_text() -> None:
    assert formats.execution(None, piece(""), piece(""), None, 20_000) == (
        "Execution(Results: [], Logs: Logs(stdout: [], stderr: []), Error: None)"
    )
    text = formats.execution(
        piece("   a\n0  1", quoted=False), piece("hi\n"), piece("warn\n"), ("KeyError", "'k'", piece("Trace")), 20_000
    )
    assert text == (
        "Execution(Results: [Result(   a\n0  1)], Logs: Logs(stdout: ['hi\\n'], stderr: ['warn\\n']), "
        "Error: ExecutionError(name='KeyError', value=\"'k'\", traceback='Trace'))"
    )


def test_long_output_is_cut_to_the_cap_and_keeps_the_end_of_the_result() -> None:
    flood = "x" * 300_000
    text = formats.command_result(piece(flood, 2_000_000), piece("e" * 50_000), 0, None, 100_000)
    assert len(text) <= 100_000
    assert text.endswith("exit_code=0, error=None)")
    stderr = ast.literal_eval(text[len("CommandResult(stderr=") : text.index(", stdout=")])
    stdout = ast.literal_eval(text[text.index(", stdout=") + len(", stdout=") : text.index(", exit_code=")])
    assert "[Result truncated" in stdout and stdout.startswith("xxxx")
    assert "[Result truncated" in stderr and len(stderr) > 20_000  # both share the room fairly
    assert "of about 2,000,000 characters shown]" in text


def test_python_cap_keeps_the_tail_of_a_traceback() -> None:
    trace = "Traceback (most recent call last):\n" + "  frame\n" * 10_000 + "ValueError: the real reason"
    text = formats.execution(
        None, piece("o" * 50_000), piece(""), ("ValueError", "the real reason", piece(trace, keep_tail=True)), 20_000
    )
    assert len(text) <= 20_000
    assert "ValueError: the real reason')" in text
    assert text.count("[Result truncated") == 2


def test_escapes_count_towards_the_cap() -> None:
    binaryish = "\x01\x02" * 30_000  # each becomes four characters in a repr
    text = formats.command_result(piece(binaryish), piece(""), 0, None, 10_000)
    assert len(text) <= 10_000


def test_binary_output_is_described_and_terminal_codes_removed() -> None:
    assert formats.readable("\x00\x01\x02PNG\x00" * 10, 60).startswith("[binary output of 60 bytes not shown")
    assert formats.readable("\ufffd" * 50 + "abc", 400).startswith("[binary output")
    assert formats.readable("\x1b[31mred\x1b[0m and plain\n", 30) == "red and plain\n"
    assert formats.readable("ü tab\there", 12) == "ü tab\there"


def test_offline_guidance_names_the_enabled_web_tools() -> None:
    all_servers = ["tool-python", "search_and_scrape_webpage", "jina_scrape_llm_summary"]
    note = formats.offline_note(["socket.gaierror: [Errno -3] Temporary failure in name resolution"], all_servers)
    assert note is not None and "google_search" in note and "scrape_and_extract_info" in note
    assert "download_file_from_internet_to_sandbox" in note
    only_python = formats.offline_note(["curl: (6) Could not resolve host: example.com"], ["tool-python"])
    assert only_python is not None and "google_search" not in only_python
    pip = formats.offline_note(["ERROR: No matching distribution found for foo"], all_servers)
    assert pip is not None and "pip cannot download packages" in pip
    assert formats.offline_note(["all good", "Connection to database ok"], all_servers) is None


def test_timeout_guidance_says_how_long_and_what_to_do() -> None:
    assert "stopped after 600 seconds" in formats.timeout_note(600, python=False)
    python = formats.timeout_note(30, python=True)
    assert "30 seconds" in python and "state was lost" in python and "smaller steps" in python


@pytest.mark.parametrize(
    ("given", "parts"),
    [
        ("/home/user", ()),
        ("", ()),
        ("/home/user/", ()),
        ("data/x.csv", ("data", "x.csv")),
        ("~/a", ("a",)),
        ("/home/user/a/../b", ("b",)),
        ("/home/user//a/./b", ("a", "b")),
    ],
)
def test_sandbox_paths_map_under_the_home(given: str, parts: tuple[str, ...]) -> None:
    assert sandbox_parts(given) == parts


@pytest.mark.parametrize("given", ["/etc/passwd", "/home/user/../x", "..", "/tmp/a", "/home/username", "a\x00b"])
def test_sandbox_paths_outside_the_home_are_refused(given: str) -> None:
    with pytest.raises(PathRefused):
        sandbox_parts(given)


def test_download_names_follow_the_reference_rules() -> None:
    assert url_file_name("https://x.org/a/report%20v2.pdf?dl=1#top") == "report v2.pdf"
    assert url_file_name("https://x.org/") == "downloaded_file"
    assert url_file_name("https://x.org/a/%2e%2e") == "downloaded_file"
    assert url_file_name("https://x.org/a/..%2fetc") == "downloaded_file"
    assert looks_like_dir("/home/user/data", ("data",), False)  # no extension
    assert looks_like_dir("/home/user/x.csv/", ("x.csv",), False)
    assert not looks_like_dir("/home/user/x.csv", ("x.csv",), False)
    assert looks_like_dir("/home/user/x.csv", ("x.csv",), True)
    assert output_name(None, "plot.png") == "plot.png" and output_name(" a.txt ", "x") == "a.txt"
    for bad in ("../a", "a/b", "..", "."):
        with pytest.raises(PathRefused):
            output_name(bad, "x")


def test_limits_become_rlimits_and_a_ulimit_line_within_the_hosts_hard_limits() -> None:
    limits = Limits(cpu_seconds=5, memory_mb=256, max_processes=32, max_file_mb=2, open_files=64)
    values = limits.rlimits()
    assert values["RLIMIT_AS"] == 256 * 1024 * 1024 and values["RLIMIT_CORE"] == 0
    line = limits.ulimit_command()
    assert line == "ulimit -HS -t 5 -v 262144 -u 32 -f 2048 -n 64 -c 0"
    hard_files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    huge = Limits(open_files=hard_files + 1000 if hard_files != resource.RLIM_INFINITY else 10**9).rlimits()
    if hard_files != resource.RLIM_INFINITY:
        assert huge["RLIMIT_NOFILE"] == hard_files
    assert "RLIMIT_CPU" not in Limits(cpu_seconds=0).rlimits()


def test_bwrap_failures_carry_bwraps_words_and_a_fix() -> None:
    error = explain_failure("bwrap: Creating new namespace failed: Operation not permitted\n")
    assert "Operation not permitted" in error.message and error.fix
    assert error.exit_code == 3
