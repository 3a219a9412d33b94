"""Every file tool's happy path and bad input, create_sandbox, and the tool box around the server."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from warcio.archiveiterator import ArchiveIterator

from appliance.agent.runtime import build_toolbox
from appliance.tools.archive import archive_dir, open_run_web, warc_files
from appliance.tools.sandbox.server import INVALID_SANDBOX_IDS, MAX_SANDBOXES_PER_RUN
from appliance.tools.specs import PYTHON_TOOLS
from tests.sandbox_support import HostServer, Run, RunFactory, command_parts, host_http, make_run, run

__all__ = ["host_http", "make_run", "run"]  # fixtures


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------ create_sandbox


def test_create_sandbox_registers_ids_that_survive_a_restart(run: Run) -> None:
    assert run.server.tools() == PYTHON_TOOLS
    first = run.call("create_sandbox", timeout=300)
    assert first.text.startswith("Sandbox created with sandbox_id: ")
    sid = first.text.rsplit(" ", 1)[1]
    assert len(sid) == 20 and sid.isalnum() and sid.islower()
    second = run.sandbox()
    registry = json.loads((run.ctx.run_dir / "sandboxes.json").read_text())["sandboxes"]
    assert registry[sid]["workspace"] == str(run.workspace)
    assert registry[second]["workspace"] == str(run.ctx.run_dir / "sandboxes" / second / "home")


def test_create_sandbox_stops_at_the_per_run_limit(run: Run) -> None:
    for _ in range(MAX_SANDBOXES_PER_RUN):
        run.sandbox()
    refused = run.call("create_sandbox")
    assert refused.is_error and "Reuse one of them" in refused.text


def test_placeholder_and_unknown_ids_get_the_reference_errors(run: Run) -> None:
    for sandbox_id in sorted(INVALID_SANDBOX_IDS)[:3]:
        out = run.sh(sandbox_id, "true")
        assert out.text == (
            f"[ERROR]: '{sandbox_id}' is not a valid sandbox_id. Please create a real sandbox first using the "
            "create_sandbox tool."
        )
    unknown = run.call("upload_file_from_local_to_sandbox", sandbox_id="nope", local_file_path="/x")
    assert unknown.text.startswith("[ERROR]: Failed to connect to sandbox nope.")


def test_run_command_reports_in_e2b_shape(run: Run) -> None:
    sid = run.sandbox()
    ok = run.sh(sid, "echo hello; echo warn >&2")
    assert ok.text == "CommandResult(stderr='warn\\n', stdout='hello\\n', exit_code=0, error=None)"
    failed = command_parts(run.sh(sid, "ls /nonexistent").text)
    assert failed["exit_code"] == 2 and failed["error"] == "exit status 2" and "No such file" in failed["stderr"]
    assert command_parts(run.sh(sid, "pwd; whoami; echo $HOME").text)["stdout"] == "/home/user\nuser\n/home/user\n"


# ------------------------------------------------------------------ uploads


def test_upload_an_attached_file_and_directory(run: Run, tmp_path: Path) -> None:
    report = _write(tmp_path / "in" / "report.csv", "a,b\n1,2\n")
    folder = tmp_path / "data"
    _write(folder / "one.txt", "1")
    _write(folder / "nested" / "two.txt", "2")
    (folder / "link-out").symlink_to("/etc/hostname")
    run = run.with_attachments(report, folder)
    sid = run.sandbox()
    out = run.call("upload_file_from_local_to_sandbox", sandbox_id=sid, local_file_path=str(report))
    assert out.text == "File uploaded to /home/user/report.csv"
    nested = run.call("upload_file_from_local_to_sandbox", sandbox_id=sid, local_file_path="report.csv",
                      sandbox_file_path="/home/user/inputs/")  # fmt: skip
    assert nested.text == "File uploaded to /home/user/inputs/report.csv"
    tree = run.call("upload_file_from_local_to_sandbox", sandbox_id=sid, local_file_path=str(folder))
    assert tree.text == "Directory uploaded to /home/user/data (2 files)"
    inside = command_parts(
        run.sh(sid, "cat report.csv inputs/report.csv data/one.txt data/nested/two.txt; ls data").text
    )
    assert inside["stdout"] == "a,b\n1,2\na,b\n1,2\n12nested\none.txt\n"
    edited = command_parts(run.sh(sid, "echo more >> report.csv && echo edited").text)
    assert edited["stdout"] == "edited\n"  # the sandbox may change what it was given
    assert report.read_text() == "a,b\n1,2\n"  # but never the user's original


def test_upload_refuses_what_was_not_attached(run: Run, tmp_path: Path) -> None:
    attached = _write(tmp_path / "ok.txt", "ok")
    elsewhere = _write(tmp_path / "private.txt", "private")
    sid = run.sandbox()
    none = run.call("upload_file_from_local_to_sandbox", sandbox_id=sid, local_file_path=str(attached))
    assert none.is_error and "no local files were attached" in none.text
    run = run.with_attachments(attached)
    for local in (str(elsewhere), str(tmp_path / "missing.txt"), "/root/.bashrc"):
        out = run.call("upload_file_from_local_to_sandbox", sandbox_id=sid, local_file_path=local)
        # The same answer whether the file exists or not: no way to probe the host's files.
        assert out.is_error and "is not one of the files attached" in out.text
    attached.unlink()
    gone = run.call("upload_file_from_local_to_sandbox", sandbox_id=sid, local_file_path=str(attached))
    assert gone.is_error and "Local file does not exist" in gone.text


# ------------------------------------------------------------------ downloads from the internet


def test_download_from_the_internet_goes_through_the_hosts_fetcher(make_run: RunFactory, host_http: HostServer) -> None:
    run = make_run(scrape__allow_hosts=[f"127.0.0.1:{host_http.port}"])
    host_http.files["/files/table%20one.csv"] = b"x,y\n"
    host_http.files["/plain"] = b"plain"
    sid = run.sandbox()
    url = host_http.url("/files/table%20one.csv?version=2")
    to_home = run.call("download_file_from_internet_to_sandbox", sandbox_id=sid, url=url)
    assert to_home.text == "File downloaded to /home/user/table one.csv"
    named = run.call("download_file_from_internet_to_sandbox", sandbox_id=sid, url=url,
                     sandbox_file_path="/home/user/data/t.csv")  # fmt: skip
    assert named.text == "File downloaded to /home/user/data/t.csv"
    into_dir = run.call("download_file_from_internet_to_sandbox", sandbox_id=sid, url=host_http.url("/plain"),
                        sandbox_file_path="/home/user/data/")  # fmt: skip
    assert into_dir.text == "File downloaded to /home/user/data/plain"
    inside = command_parts(run.sh(sid, "cat 'table one.csv' data/t.csv data/plain").text)
    assert inside["stdout"] == "x,y\nx,y\nplain"
    missing = run.call("download_file_from_internet_to_sandbox", sandbox_id=sid, url=host_http.url("/nope"))
    assert missing.is_error and "HTTP 404" in missing.text
    assert list((run.ctx.run_dir / ".downloads").iterdir()) == []


def test_download_from_the_internet_refuses_private_addresses_and_oversized_files(
    make_run: RunFactory, host_http: HostServer
) -> None:
    host_http.files["/big"] = b"z" * 5000
    blocked = make_run()
    sid = blocked.sandbox()
    out = blocked.call("download_file_from_internet_to_sandbox", sandbox_id=sid, url=host_http.url("/big"))
    assert out.is_error and "refusing to fetch" in out.text and host_http.hits == []
    bad_scheme = blocked.call("download_file_from_internet_to_sandbox", sandbox_id=sid, url="file:///etc/passwd")
    assert bad_scheme.is_error and "only http and https" in bad_scheme.text
    small = make_run(scrape__allow_hosts=[f"127.0.0.1:{host_http.port}"], scrape__max_bytes=1000)
    too_big = small.call("download_file_from_internet_to_sandbox", sandbox_id=sid, url=host_http.url("/big"))
    assert too_big.is_error and "limit" in too_big.text
    assert not (small.workspace / "big").exists()


# ------------------------------------------------------------------ downloads to the host


def test_download_from_the_sandbox_lands_in_the_output_directory(run: Run) -> None:
    sid = run.sandbox()
    run.sh(sid, "mkdir -p results && printf 'chart' > results/plot.png && printf 'csv' > out.csv")
    first = run.call(
        "download_file_from_sandbox_to_local", sandbox_id=sid, sandbox_file_path="/home/user/results/plot.png"
    )
    target = run.ctx.output_dir / "plot.png"
    assert first.text == f"File downloaded successfully to: {target}" and target.read_bytes() == b"chart"
    again = run.call("download_file_from_sandbox_to_local", sandbox_id=sid, sandbox_file_path="results/plot.png")
    assert again.text.endswith("plot-2.png") and (run.ctx.output_dir / "plot-2.png").read_bytes() == b"chart"
    renamed = run.call("download_file_from_sandbox_to_local", sandbox_id=sid, sandbox_file_path="out.csv",
                       local_filename="final.csv")  # fmt: skip
    assert renamed.text.endswith("final.csv") and (run.ctx.output_dir / "final.csv").read_text() == "csv"


def test_download_from_the_sandbox_bad_input(run: Run) -> None:
    sid = run.sandbox()
    run.sh(sid, "mkdir adir")
    directory = run.call("download_file_from_sandbox_to_local", sandbox_id=sid, sandbox_file_path="adir")
    assert (
        directory.text
        == f"[ERROR]: Cannot download 'adir' from sandbox {sid}: /home/user/adir is a directory, not a file."
    )
    missing = run.call("download_file_from_sandbox_to_local", sandbox_id=sid, sandbox_file_path="nothing.txt")
    assert missing.is_error and "does not exist" in missing.text
    home = run.call("download_file_from_sandbox_to_local", sandbox_id=sid, sandbox_file_path="/home/user")
    assert home.is_error and "is a directory" in home.text


# ------------------------------------------------------------------ through the tool box


def test_the_tool_box_validates_arguments_and_hides_the_download_tool(make_run: RunFactory) -> None:
    run = make_run(tools__enabled=["tool-python"])
    toolbox = build_toolbox(run.settings, lambda: None)  # type: ignore[arg-type, return-value]
    try:
        listed = {tool.name for spec in toolbox.server_specs() for tool in spec.tools}
        assert "download_file_from_sandbox_to_local" not in listed and "run_python_code" in listed
        missing = toolbox.call("tool-python", "run_command", {"sandbox_id": "x"}, run.ctx)
        assert missing.status == "bad_arguments" and "command: field required" in missing.text
        created = toolbox.call("tool-python", "create_sandbox", {}, run.ctx)
        assert created.status == "ok"
        sid = created.text.rsplit(" ", 1)[1]
        ran = toolbox.call("tool-python", "run_python_code", {"code_block": "21 * 2", "sandbox_id": sid}, run.ctx)
        assert ran.status == "ok" and "Result(42)" in ran.text
    finally:
        toolbox.close()


def test_downloads_into_the_sandbox_are_archived_and_replayed(make_run: RunFactory, host_http: HostServer) -> None:
    run = make_run(scrape__allow_hosts=[f"127.0.0.1:{host_http.port}"])
    host_http.files["/data.bin"] = bytes(range(256)) * 40
    s = run.settings
    web = open_run_web(s.archive, s.scrape, s.dirs.run_dir, run.ctx.run_id, run.ctx.run_dir)
    run.ctx = dataclasses.replace(run.ctx, web=web)
    sid = run.sandbox()
    out = run.call("download_file_from_internet_to_sandbox", sandbox_id=sid, url=host_http.url("/data.bin"))
    assert out.text == "File downloaded to /home/user/data.bin"
    (ref,) = out.meta["archive"]
    (file,) = warc_files(archive_dir(run.ctx.run_dir))
    with file.open("rb") as handle:
        handle.seek(ref["offset"])
        record = next(iter(ArchiveIterator(handle, check_digests="raise")))
        assert record.rec_headers.get_header("Appliance-Source") == "download"
        assert record.content_stream().read() == bytes(range(256)) * 40
    # Offline, the same download is answered from the archive into the sandbox; another is "not archived".
    settings = dataclasses.replace(s, archive=dataclasses.replace(s.archive, web=f"archive:{run.ctx.run_id}"))
    replay = open_run_web(settings.archive, settings.scrape, s.dirs.run_dir, "other-run", run.ctx.run_dir.parent / "o")
    run.ctx = dataclasses.replace(run.ctx, web=replay)
    again = run.call("download_file_from_internet_to_sandbox", sandbox_id=sid, url=host_http.url("/data.bin"),
                     sandbox_file_path="/home/user/copy.bin")  # fmt: skip
    assert again.text == "File downloaded to /home/user/copy.bin"
    assert command_parts(run.sh(sid, "cmp data.bin copy.bin && echo same").text)["stdout"] == "same\n"
    missing = run.call("download_file_from_internet_to_sandbox", sandbox_id=sid, url=host_http.url("/other.bin"))
    assert missing.is_error and "not archived" in missing.text
