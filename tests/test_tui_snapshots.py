"""The look of the main, history and status screens, pinned with pytest-textual-snapshot.

Deterministic by construction: fixed terminal sizes, a fixed clock, runs recorded
from fixed events (ids, dates, durations, token counts), fixed component checks,
and no blinking cursor. Update after an intended change with
`pytest tests/test_tui_snapshots.py --snapshot-update` and look at the SVGs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, TextArea

from appliance.install.doctor import Check
from appliance.tui.app import ApplianceApp
from appliance.tui.status_screen import Diagnosis
from appliance.tui.toolcall import ToolCallView
from tests.tui_support import record_fixed_run, wait_for, write_script

RUN_ID = "20250101-094500-a1b2c3"

Snap = Callable[..., bool]


def fixed_diagnosis(settings: Any) -> Diagnosis:
    return Diagnosis(
        "CPU: Example CPU, 8 cores / 16 threads (avx2 fma)\nRAM: 31.3 GiB (28.0 GiB available)",
        "profile cpu-8b: weights 4.7 GiB + KV cache 4.5 GiB + buffers 1.0 GiB = 10.2 GiB of 28.0 GiB: fits",
        [
            Check("model", "fail", "/models/absent.gguf is missing", "run `appliance install` to download it"),
            Check("llama-cpp-python", "ok", "0.3.36, GPU offload not built in"),
            Check("sandbox (bwrap)", "ok", "/usr/bin/bwrap creates namespaces"),
            Check("SearXNG", "fail", "nothing answers at 127.0.0.1:8888", "run `appliance searxng start`"),
            Check("disk", "ok", "120.5 GiB free at /data"),
        ],
    )


@pytest.fixture
def home(appliance_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Paths shown on screen are relative to here, so they do not depend on the temporary directory.
    monkeypatch.chdir(tmp_path)
    write_script(tmp_path / "run.jsonl", ["\\boxed{1}"])
    return tmp_path


def app_for(**options: Any) -> ApplianceApp:
    base: dict[str, Any] = {"db": Path("history.db"), "backend": "replay", "replay": Path("run.jsonl")}
    base.update(options)
    return ApplianceApp(base, diagnose=fixed_diagnosis, clock=lambda: 1000.0)


async def no_blink(pilot: Pilot[Any]) -> None:
    for area in pilot.app.screen.query(TextArea):
        area.cursor_blink = False
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    await pilot.pause()


def open_run(run_id: str, *, expand: bool = False, home: bool = False) -> Callable[[Pilot[Any]], Any]:
    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, ApplianceApp)
        await app.main.open_run(run_id)
        await wait_for(lambda: app.main.phase == "done", what="the replay")
        if expand:
            for view in app.main.query(ToolCallView):
                view.collapsed = False
        await pilot.pause()
        if home:
            app.main.query_one("#transcript").scroll_home(animate=False)
        await no_blink(pilot)

    return run_before


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_main_screen_at_start(home: Path, snap_compare: Snap, size: tuple[int, int]) -> None:
    assert snap_compare(app_for(), terminal_size=size, run_before=no_blink)


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_main_screen_past_run(home: Path, snap_compare: Snap, size: tuple[int, int]) -> None:
    record_fixed_run(home / "history.db", RUN_ID, "How many moons does Mars have?")
    assert snap_compare(app_for(), terminal_size=size, run_before=open_run(RUN_ID))


def test_main_screen_past_run_wide_light(home: Path, snap_compare: Snap) -> None:
    record_fixed_run(home / "history.db", RUN_ID, "How many moons does Mars have?")
    app = app_for()
    app.theme = "textual-light"
    assert snap_compare(app, terminal_size=(130, 50), run_before=open_run(RUN_ID, expand=True, home=True))


def test_main_screen_interrupted_run(home: Path, snap_compare: Snap) -> None:
    record_fixed_run(home / "history.db", RUN_ID, "How many moons does Mars have?", status="interrupted")
    assert snap_compare(app_for(), terminal_size=(80, 24), run_before=open_run(RUN_ID))


def test_main_screen_missing_model(home: Path, snap_compare: Snap) -> None:
    app = app_for(backend="llamacpp", replay=None, model="/models/absent.gguf")

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press(*"How many moons does Mars have?", "ctrl+s")
        await wait_for(lambda: app.main.phase == "idle" and bool(app.main.query(".error-panel")), what="the error")
        await no_blink(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_history_screen(home: Path, snap_compare: Snap, size: tuple[int, int]) -> None:
    db = home / "history.db"
    record_fixed_run(db, RUN_ID, "How many moons does Mars have?", started_at="2025-01-01T09:45:00.000+00:00")
    record_fixed_run(
        db,
        "20250102-101500-d4e5f6",
        "Which of the moons of Mars was discovered first, and by whom? Give the date.",
        status="interrupted",
        started_at="2025-01-02T10:15:00.000+00:00",
    )
    record_fixed_run(
        db, "20250103-080000-0a0b0c", "Orbital period of Deimos", started_at="2025-01-03T08:00:00.000+00:00"
    )

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press("f2")
        await wait_for(lambda: bool(getattr(pilot.app.screen, "rows", None)), what="the list")
        await pilot.press("down")
        await no_blink(pilot)

    assert snap_compare(app_for(), terminal_size=size, run_before=run_before)


def test_history_screen_with_a_thread(home: Path, snap_compare: Snap) -> None:
    db = home / "history.db"
    record_fixed_run(db, RUN_ID, "How many moons does Mars have?", started_at="2025-01-01T09:45:00.000+00:00")
    child = "20250101-095000-d4e5f6"
    record_fixed_run(db, child, "And Jupiter?", started_at="2025-01-01T09:50:00.000+00:00", parent_run=RUN_ID)
    record_fixed_run(
        db, "20250101-095500-0a0b0c", "Which is the largest?", started_at="2025-01-01T09:55:00.000+00:00",
        parent_run=child,
    )  # fmt: skip

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press("f2")
        await wait_for(lambda: bool(getattr(pilot.app.screen, "rows", None)), what="the list")
        await no_blink(pilot)

    assert snap_compare(app_for(), terminal_size=(100, 24), run_before=run_before)


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_status_screen(home: Path, snap_compare: Snap, size: tuple[int, int]) -> None:
    app = app_for(backend=None, replay=None, model="/models/absent.gguf")

    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press("f3")
        await wait_for(lambda: bool(pilot.app.screen.query(".check")), what="the checks")
        await no_blink(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run_before)


def test_command_palette(home: Path, snap_compare: Snap) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await pilot.press("/")
        await wait_for(lambda: bool(pilot.app.screen.query("CommandList")), what="the palette")
        await pilot.press(*"switch")
        await wait_for(
            lambda: pilot.app.screen.query_one("CommandList").option_count > 3,  # type: ignore[attr-defined]
            what="the profiles",
        )
        await no_blink(pilot)

    # No model flags: each profile is offered as it stands here (none has its model installed).
    app = app_for(backend=None, replay=None)
    assert snap_compare(app, terminal_size=(100, 24), run_before=run_before)


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_main_screen_that_could_not_start(
    home: Path, snap_compare: Snap, size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    (home / "home" / "config.toml").write_text("[model\nbackend = 'replay'\n", encoding="utf-8")
    monkeypatch.setenv("APPLIANCE_HOME", "home")  # relative to the test's directory: the same path on every machine
    assert snap_compare(app_for(), terminal_size=size, run_before=no_blink)
