"""`appliance dataset build`: real eval runs over the offline sample (replay backend, flaws scripted in),
then the build: what each filter removes, which runs pair, the files as `datasets` loads them, privacy,
bad input."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.dataset.filters import ngram_repeat_ratio
from appliance.protocol.failure import FAILURE_SUMMARY_ASSISTANT_PREFIX, render_enhanced_task
from appliance.store import open_history
from tests.conftest import run_cli, tool_call, write_replay
from tests.store_support import write_script

SEARCH = ("search_and_scrape_webpage", "google_search")
PYTHON = "tool-python"
QUESTIONS = {
    json.loads(line)["task_id"]: json.loads(line)["Question"]
    for line in (Path(__file__).resolve().parent.parent / "appliance/eval/data/sample/tasks.jsonl")
    .read_text(encoding="utf-8")
    .splitlines()
}


def search(q: str, thinking: str) -> str:
    return tool_call(*SEARCH, {"q": q}, thinking)


def sandbox(thinking: str) -> str:
    return tool_call(PYTHON, "create_sandbox", {}, thinking)


def answer(text: str, boxed: str) -> list[str]:
    return [f"<think>\n{text}\n</think>\n\n{text}", f"\\boxed{{{boxed}}}"]


REPETITIVE = "<think>\n" + "Let me check the tea guide for the oolong temperature again. " * 8 + "\n</think>\n\n"
# Two evals of the six sample tasks. alpha: mostly right, with flaws; beta: mostly wrong.
ALPHA: dict[str, list[Any]] = {
    "sample-01": [
        search("Zephyr build tool first public release", "Look it up."),
        *answer("Released in 2019.", "2019"),
    ],
    "sample-02": [
        REPETITIVE + search("oolong tea water temperature brewing guide", "Search.").split("</think>\n\n", 1)[1],
        *answer("Oolong at 90 °C.", "90"),
    ],
    "sample-03": [
        sandbox("I need a sandbox."),
        sandbox("Let me make sure a sandbox exists."),
        *answer("1,245,000 volumes; Mira Okafor.", "1245000, Mira Okafor"),
    ],
    # A reply that repeats itself is sent again nine times and the tenth accepted (the reference's
    # client), then the loop discards it, four times; the fifth stands: 5 x 10 replies.
    "sample-04": [
        *[search("Zephyr build tool remote caching release", "Which version?") + "\n" + "Searching now. " * 40] * 50,
        *answer("2020-2019", "1"),
    ],
    "sample-05": [
        *(tool_call(PYTHON, "read_csv", {"path": "sample-data.csv"}, f"Read the file (try {i}).") for i in range(5)),
        *answer("12 + 30 + 7 + 15 = 64.", "64"),
    ],
    "sample-06": [
        search("Selene Outpost first crew engineer", "Look up the crew."),
        *answer("Kofi Mensah.", "Kofi Mensah; 2041"),
    ],
}
BETA: dict[str, list[Any]] = {
    "sample-01": [
        search("Zephyr build tool first public release", "Look it up."),
        *answer("Released in 2018.", "2018"),
    ],
    "sample-02": [
        search("oolong tea water temperature brewing guide", "Search."),
        "<think>\nHot water.\n</think>\n\nOolong should be brewed hot.",
        *["I am not sure." for _ in range(3)],
    ],
    "sample-03": [
        sandbox("I need a sandbox."),
        sandbox("I need a sandbox."),
        sandbox("One more sandbox."),
        *answer("About a million volumes.", "1000000, Mira Okafor"),
    ],
    "sample-04": [
        search("Zephyr build tool remote caching release", "Which version?"),
        *(
            tool_call(PYTHON, "run_command", {"command": f"echo {i}", "sandbox_id": "sbx-missing"}, f"Try {i}.")
            for i in range(3)
        ),
        *answer("2021 - 2019 = 2.", "2"),
    ],
    # Cut by max_tokens, continued nine times and still cut: the turn stands truncated.
    "sample-05": [
        {"content": "<think>\nThe amounts are 12, 30 and 7, so the sum", "finish_reason": "length"},
        *(
            {"content": f" {word}", "finish_reason": "length"}
            for word in ("is", "forty-nine", "unless", "the", "fourth", "row", "adds", "fifteen", "more")
        ),
        "\\boxed{49}",
    ],
    "sample-06": ALPHA["sample-06"],
}


def write_scripts(directory: Path, scripts: dict[str, list[Any]]) -> Path:
    directory.mkdir(parents=True)
    for task_id, turns in scripts.items():
        lines = [t if isinstance(t, dict) else {"content": t} for t in turns]
        (directory / f"{task_id}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def evals(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Both evals run once for the module; each test builds into its own directory."""
    root = tmp_path_factory.mktemp("dataset")
    home = root / "home"
    home.mkdir()
    env = {"APPLIANCE_HOME": str(home), "HOME": str(root)}
    for name, scripts in (("alpha", ALPHA), ("beta", BETA)):
        replays = write_scripts(root / f"replays-{name}", scripts)
        result = run_cli(
            # One run per task (--attempts 0): the scripts are single runs; attempts have their own test.
            ["eval", "--sample", "--backend", "replay", "--replay", str(replays), "--name", name, "--attempts", "0"],
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
    with open_history(home / "history.db") as history:
        ids = {}
        for name in ("alpha", "beta"):
            for task_id in QUESTIONS:
                (run,) = history.list_runs(tag=f"eval:{name}:{task_id}:1")
                ids[f"{name[0]}{task_id[-2:]}"] = run.run_id
    yield {"root": root, "home": home, "env": env, "ids": ids}


def build(evals: dict[str, Any], out: Path, *args: str) -> tuple[Any, dict[str, Any]]:
    result = run_cli(["dataset", "build", str(out), *args], env=evals["env"])
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else {}
    return result, manifest


def removed(manifest: dict[str, Any], side: str, ids: dict[str, str]) -> dict[str, set[str]]:
    """filter -> the short names (a01, b03, ...) of the runs it removed."""
    short = {run_id: name for name, run_id in ids.items()}
    return {f["name"]: {short[r["run_id"]] for r in f["runs"]} for f in manifest["filters"][side]}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_filter_removes_exactly_its_runs(evals: dict[str, Any], tmp_path: Path) -> None:
    ids = evals["ids"]
    result, manifest = build(evals, tmp_path / "ds", "--eval", "alpha", "--eval", "beta")
    assert result.returncode == 0, result.stderr
    assert manifest["runs"] == 12
    assert manifest["scores"] == {
        "correct": 7, "incorrect": 5, "unscored": 0, "sources": {"eval alpha": 6, "eval beta": 6},
    }  # fmt: skip
    assert removed(manifest, "sft", ids) == {
        "unfinished": set(),
        "no_answer": {"b02"},
        "truncated": {"b05"},
        "repetition": {"a02", "a04"},
        "duplicate_reply": {"b03"},
        "duplicate_call": {"a03", "b03"},
        "bad_calls": {"a05"},
        "incorrect": {"a04", "b01", "b02", "b03", "b05"},
        "duplicate_trajectory": {"b06"},  # the same messages as a06
    }
    assert removed(manifest, "chosen", ids) == {
        "unfinished": set(), "truncated": set(), "pathological_success": {"a03", "b04"},
    }  # fmt: skip
    assert removed(manifest, "rejected", ids) == {"unfinished": set(), "trivial_failure": {"b02", "b03"}}
    reasons = {
        (f["name"], r["run_id"]): r["why"] for s in ("sft", "chosen") for f in manifest["filters"][s] for r in f["runs"]
    }
    assert reasons["pathological_success", ids["b04"]] == "3 failed calls in a row"
    assert reasons["repetition", ids["a04"]] == "turn 1 repeats its last 50 characters more than 5 times"
    assert (
        reasons["repetition", ids["a02"]].startswith("turn 1 repeats ")
        and "of its 4-grams" in reasons["repetition", ids["a02"]]
    )
    # What is left: three trajectories, in run order, and the line order is in the manifest.
    assert manifest["sft"]["run_ids"] == [ids["a01"], ids["a06"], ids["b04"]]
    sft = read_jsonl(tmp_path / "ds" / "sft.jsonl")
    assert [row["messages"][1]["content"].split("\n")[0] for row in sft] == [
        QUESTIONS["sample-01"], QUESTIONS["sample-06"], QUESTIONS["sample-04"],
    ]  # fmt: skip
    assert "SFT trajectories" in result.stdout and "duplicate_trajectory 1" in result.stdout


def test_the_trajectory_is_what_the_model_saw(evals: dict[str, Any], tmp_path: Path) -> None:
    ids = evals["ids"]
    result, _ = build(evals, tmp_path / "ds", "--eval", "beta", "--no-filter", "incorrect", "--no-filter", "no_answer")
    assert result.returncode == 0, result.stderr
    sft = read_jsonl(tmp_path / "ds" / "sft.jsonl")
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    rows = dict(zip(manifest["sft"]["run_ids"], sft, strict=True))
    # The same messages as `history export --view context` of the run: the exporter is the one source.
    exported = run_cli(["history", "export", ids["b04"], "--view", "context"], env=evals["env"])
    assert rows[ids["b04"]]["messages"] == json.loads(exported.stdout)["messages"]
    messages = rows[ids["b04"]]["messages"]
    assert [m["role"] for m in messages[:4]] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("In this environment you have access to a set of tools")
    assert messages[2]["content"].startswith("<think>\nWhich version?\n</think>")  # thinking kept
    assert "Failed to connect to sandbox sbx-missing" in messages[5]["content"]  # a tool result as the model read it
    assert messages[-1] == {"role": "assistant", "content": "\\boxed{2}"}
    # b02 has no answer: its trajectory ends with the last summary attempt the model made.
    assert rows[ids["b02"]]["messages"][-1]["content"] == "I am not sure."


def test_pairs_join_runs_of_the_same_task_with_opposite_scores(evals: dict[str, Any], tmp_path: Path) -> None:
    ids = evals["ids"]
    _, manifest = build(evals, tmp_path / "ds", "--eval", "alpha", "--eval", "beta")
    assert manifest["dpo"]["run_ids"] == [
        {"chosen": ids["a01"], "rejected": ids["b01"]},
        {"chosen": ids["a05"], "rejected": ids["b05"]},
    ]
    pairs = read_jsonl(tmp_path / "ds" / "dpo.jsonl")
    for pair, task in zip(pairs, ("sample-01", "sample-05"), strict=True):
        assert [m["role"] for m in pair["prompt"]] == ["system", "user"]
        assert pair["prompt"][1]["content"].startswith(QUESTIONS[task])
        assert pair["chosen"][0]["role"] == pair["rejected"][0]["role"] == "assistant"
        assert pair["chosen"] != pair["rejected"]
    assert pairs[0]["chosen"][-1]["content"] == "\\boxed{2019}"
    assert pairs[0]["rejected"][-1]["content"] == "\\boxed{2018}"
    # A threshold is an option: with a longer error streak allowed, b04 may be chosen against a04.
    _, relaxed = build(evals, tmp_path / "relaxed", "--eval", "alpha", "--eval", "beta", "--max-error-streak", "4")
    assert {"chosen": ids["b04"], "rejected": ids["a04"]} in relaxed["dpo"]["run_ids"]
    assert len(relaxed["dpo"]["run_ids"]) == 3
    # And a filter can be turned off: b02 (no answer) may be rejected against a02; b03 finds no chosen (a03 is
    # still a pathological success).
    _, loose = build(evals, tmp_path / "loose", "--eval", "beta", "--eval", "alpha", "--no-filter", "trivial_failure")
    assert [f["enabled"] for f in loose["filters"]["rejected"]] == [True, False]
    assert loose["dpo"]["run_ids"] == [
        {"chosen": ids["a01"], "rejected": ids["b01"]},
        {"chosen": ids["a02"], "rejected": ids["b02"]},
        {"chosen": ids["a05"], "rejected": ids["b05"]},
    ]


def test_the_files_load_with_hugging_face_datasets(evals: dict[str, Any], tmp_path: Path) -> None:
    from datasets import load_dataset

    out = tmp_path / "ds"
    result, _ = build(evals, out, "--eval", "alpha", "--eval", "beta")
    assert result.returncode == 0, result.stderr
    sft = load_dataset("json", data_files=str(out / "sft.jsonl"), split="train", cache_dir=str(tmp_path / "cache"))
    assert sft.column_names == ["messages"] and len(sft) == 3
    assert sft[0]["messages"][0]["role"] == "system"
    dpo = load_dataset("json", data_files=str(out / "dpo.jsonl"), split="train", cache_dir=str(tmp_path / "cache"))
    assert dpo.column_names == ["prompt", "chosen", "rejected"] and len(dpo) == 2
    assert dpo[1]["rejected"][-1] == {"role": "assistant", "content": "\\boxed{49}"}
    # The card's front matter names both files as configs, so the directory loads by name too.
    by_config = load_dataset(str(out), "dpo", split="train", cache_dir=str(tmp_path / "cache"))
    assert len(by_config) == 2
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "| SFT | repetition | ngram_size=4, max_ngram_repeat=0.5 | 2 |" in card


def test_ngram_repeat_ratio() -> None:
    assert ngram_repeat_ratio("one two three four five six " * 2, 4) == 0.0  # too short to judge
    prose = " ".join(f"w{i}" for i in range(40))
    assert ngram_repeat_ratio(prose, 4) == 0.0
    assert ngram_repeat_ratio("a b c d e " * 20, 4) == pytest.approx(1 - 5 / 97)


# ------------------------------------------------------------------ labels, privacy, bad input


SECRET = "sk-live-4f9a8b7c6d5e"


@pytest.fixture
def labelled(appliance_home: Path, tmp_path: Path) -> dict[str, Any]:
    """Two headless runs of the same task with an attachment in the user's home, unscored."""
    user_home = tmp_path / "user"
    (user_home / "data").mkdir(parents=True)
    (user_home / "data" / "notes.txt").write_text("seven\n", encoding="utf-8")
    env = {"APPLIANCE_TOOLS_ENABLED": "", "HOME": str(user_home), "APPLIANCE_MODEL_API_KEY": SECRET}
    leaky = (
        f"<think>\nThe server at https://bob:hunter2pass@example.org/v1?api_key={SECRET} says the key is {SECRET}; "
        f"I wrote {user_home}/data/out.txt.\n</think>\n\nSeven."
    )
    run_ids = []
    for boxed in ("7", "8"):
        replay = write_replay(tmp_path / f"r{boxed}.jsonl", [leaky, f"\\boxed{{{boxed}}}"])
        result = run_cli(
            ["--task", "What number is in the notes?", "--replay", str(replay), "--attach",
             str(user_home / "data" / "notes.txt"), "--json"],
            env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        run_ids.append(json.loads(result.stdout)["run_id"])
    return {"env": env, "home": user_home, "runs": run_ids}


def test_unscored_runs_give_sft_only_then_labels_make_a_pair(labelled: dict[str, Any], tmp_path: Path) -> None:
    env = labelled["env"]
    out = tmp_path / "ds"
    today = dt.date.today().isoformat()
    result = run_cli(["dataset", "build", str(out), "--since", "1h", "--until", today, "--status", "answered"], env=env)
    assert result.returncode == 0, result.stderr
    assert "no run in the selection has a score" in result.stderr and "appliance history tag" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "manifest.json", "sft.jsonl"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # a folder like any the user makes, not 0700
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ds")] == []  # no staging left behind
    assert len(read_jsonl(out / "sft.jsonl")) == 2
    assert "dpo.jsonl`: not written: no run in the selection has a score" in (out / "README.md").read_text()

    good, bad = labelled["runs"]
    assert run_cli(["history", "tag", good, "correct"], env=env).returncode == 0
    assert run_cli(["history", "tag", bad, "incorrect"], env=env).returncode == 0
    result = run_cli(["dataset", "build", str(out), "--force"], env=env)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dpo"]["run_ids"] == [{"chosen": good, "rejected": bad}]
    assert manifest["scores"]["sources"] == {"label": 2}
    assert manifest["sft"]["run_ids"] == [good]  # the incorrect one is filtered out of SFT now
    # A label wins over nothing and conflicting labels score nothing.
    assert run_cli(["history", "tag", good, "incorrect"], env=env).returncode == 0
    result = run_cli(["dataset", "build", str(out), "--force"], env=env)
    assert json.loads((out / "manifest.json").read_text())["scores"]["unscored"] == 1
    assert not (out / "dpo.jsonl").exists()  # the old pair is not left behind


def _all_text(out: Path) -> str:
    return "".join(p.read_text(encoding="utf-8") for p in sorted(out.iterdir()))


def test_no_secret_and_with_the_option_no_home_path(labelled: dict[str, Any], tmp_path: Path) -> None:
    env, home = labelled["env"], str(labelled["home"])
    plain, redacted = tmp_path / "plain", tmp_path / "redacted"
    assert run_cli(["dataset", "build", str(plain)], env=env).returncode == 0
    assert run_cli(["dataset", "build", str(redacted), "--redact-paths"], env=env).returncode == 0
    text = _all_text(plain)
    assert SECRET not in text and "hunter2pass" not in text
    assert "https://***@example.org/v1?api_key=***" in text
    assert home in text  # the attachment note and the reply name it: the next check can fail
    text = _all_text(redacted)
    assert SECRET not in text and "hunter2pass" not in text and home not in text
    assert "I wrote ~/data/out.txt" in text and "~/data/notes.txt" in text


def test_bad_input(labelled: dict[str, Any], tmp_path: Path) -> None:
    env = labelled["env"]
    out = tmp_path / "ds"
    result = run_cli(["dataset", "build", str(out), "--tag", "nothing-has-this"], env=env)
    assert result.returncode == 2
    assert "no run matches the selection (tags nothing-has-this)" in result.stderr
    assert "appliance history list" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()  # no empty files
    result = run_cli(["dataset", "build", str(out), "--since", "2099-01-01"], env=env)
    assert result.returncode == 2 and not out.exists()
    result = run_cli(["dataset", "build", str(out), "--since", "yesterday-ish"], env=env)
    assert result.returncode == 2 and "is not a date" in result.stderr
    # An existing directory is refused, its content untouched, unless --force.
    out.mkdir()
    (out / "mine.txt").write_text("keep me", encoding="utf-8")
    result = run_cli(["dataset", "build", str(out)], env=env)
    assert result.returncode == 2 and "already exists" in result.stderr and "--force" in result.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert run_cli(["dataset", "build", str(out), "--force"], env=env).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "manifest.json", "mine.txt", "sft.jsonl"]
    # A path that is a file is never a dataset directory.
    result = run_cli(["dataset", "build", str(out / "mine.txt"), "--force"], env=env)
    assert result.returncode == 2 and "is a file" in result.stderr
    # A history that does not exist is not created.
    result = run_cli(["dataset", "build", str(tmp_path / "x"), "--db", str(tmp_path / "none.db")], env=env)
    assert result.returncode == 3 and not (tmp_path / "none.db").exists()


def test_format_errors_are_bad_calls_for_sft_and_trivial_failures_for_dpo(appliance_home: Path, tmp_path: Path) -> None:
    """Out of rollbacks, a reply with tool-call tags and no parseable call stands, and the run ends."""
    broken = "<think>\nCall it.\n</think>\n\n<use_mcp_tool>\n<server_name>tool-python</server_name>\n"
    replay = write_replay(tmp_path / "r.jsonl", [broken] * 5 + ["\\boxed{3}"])
    env = {"APPLIANCE_TOOLS_ENABLED": ""}
    result = run_cli(["--task", "How many?", "--replay", str(replay), "--json"], env=env)
    run_id = json.loads(result.stdout)["run_id"]
    assert run_cli(["history", "tag", run_id, "incorrect"], env=env).returncode == 0
    out = tmp_path / "ds"
    result = run_cli(["dataset", "build", str(out), "--no-filter", "incorrect"], env=env)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    why = {
        (f["name"], r["run_id"]): r["why"]
        for s in ("sft", "rejected")
        for f in manifest["filters"][s]
        for r in f["runs"]
    }
    assert why == {
        ("bad_calls", run_id): "a reply has tool-call tags but no parseable call",
        ("trivial_failure", run_id): "format error: a reply the loop could not use",
    }
    assert not (out / "sft.jsonl").exists() and "nothing passed the filters" in result.stderr


def test_runs_of_the_same_task_with_different_prompts_are_not_paired(appliance_home: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("seven\n", encoding="utf-8")
    env = {"APPLIANCE_TOOLS_ENABLED": ""}
    for boxed, extra in (("7", ["--attach", str(tmp_path / "notes.txt")]), ("8", [])):
        replay = write_replay(tmp_path / f"r{boxed}.jsonl", ["Seven.", f"\\boxed{{{boxed}}}"])
        result = run_cli(["--task", "What number?", "--replay", str(replay), "--json", *extra], env=env)
        label = "correct" if boxed == "7" else "incorrect"
        assert run_cli(["history", "tag", json.loads(result.stdout)["run_id"], label], env=env).returncode == 0
    result = run_cli(["dataset", "build", str(tmp_path / "ds")], env=env)
    assert result.returncode == 0, result.stderr
    assert "no DPO pairs: 1 run(s) scored correct and 1 scored incorrect pass the filters" in result.stderr
    assert "1 task(s) have correct and incorrect runs whose prompts differ" in result.stderr
    assert not (tmp_path / "ds" / "dpo.jsonl").exists()


def test_the_context_view_omits_old_results_as_the_loop_did_and_full_keeps_them(
    appliance_home: Path, tmp_path: Path
) -> None:
    env = {"APPLIANCE_TOOLS_ENABLED": ""}
    turns = [tool_call("nowhere", "lookup", {"q": q}) for q in ("first", "second")] + ["Done.", "\\boxed{1}"]
    replay = write_replay(tmp_path / "r.jsonl", turns)
    result = run_cli(["--task", "Look twice", "--replay", str(replay), "--keep-last", "1", "--json"], env=env)
    assert result.returncode == 0, result.stderr
    results = {}
    for view in ("context", "full"):
        out = tmp_path / view
        built = run_cli(["dataset", "build", str(out), "--view", view, "--no-filter", "bad_calls"], env=env)
        assert built.returncode == 0, built.stderr
        (row,) = read_jsonl(out / "sft.jsonl")
        results[view] = [m["content"] for m in row["messages"] if m["content"].startswith(("Tool", "Tool call"))]
    assert len(results["context"]) == len(results["full"]) == 2
    assert results["context"][0] == "Tool result is omitted to save tokens."
    assert all("lookup on nowhere failed" in text for text in results["full"])


def test_an_eval_written_elsewhere_scores_runs_with_eval_dir(evals: dict[str, Any], tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(evals["home"], home, ignore=shutil.ignore_patterns("runs"))
    shutil.move(home / "evals" / "alpha", tmp_path / "alpha-out")  # as if run with `appliance eval --out`
    env = {**evals["env"], "APPLIANCE_HOME": str(home)}
    result = run_cli(["dataset", "build", str(tmp_path / "a"), "--eval", "alpha"], env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["scores"]["unscored"] == 6
    result = run_cli(
        ["dataset", "build", str(tmp_path / "b"), "--eval", "alpha", "--eval-dir", str(tmp_path / "alpha-out")], env=env
    )
    scores = json.loads((tmp_path / "b" / "manifest.json").read_text())["scores"]
    assert scores == {"correct": 5, "incorrect": 1, "unscored": 0, "sources": {"eval alpha-out": 6}}


def test_each_attempt_of_a_task_is_a_trajectory_of_its_own(appliance_home: Path, tmp_path: Path) -> None:
    # Attempt 1 ends without a box and leaves a failure summary; attempt 2 starts from the enhanced task.
    summary = "Failure type: format_missed"
    turns: list[Any] = [
        "Maybe.", "No idea.", "No idea.", "No idea.", {"content": summary, "prefix": FAILURE_SUMMARY_ASSISTANT_PREFIX},
        "<think>\nTwo.\n</think>\n\nTwo moons.", "\\boxed{2}",
    ]  # fmt: skip
    replay = write_script(tmp_path / "r.jsonl", turns)
    env = {"APPLIANCE_TOOLS_ENABLED": ""}
    ran = run_cli(["--task", "How many moons has Mars?", "--replay", str(replay), "--attempts", "1", "--json"], env=env)
    assert ran.returncode == 0, ran.stderr
    first, second = (a["run_id"] for a in json.loads(ran.stdout)["attempts"])
    out = tmp_path / "ds"
    built = run_cli(["dataset", "build", str(out), "--no-filter", "no_answer"], env=env)
    assert built.returncode == 0, built.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["sft"]["run_ids"]) == sorted([first, second])
    rows = dict(zip(manifest["sft"]["run_ids"], read_jsonl(out / "sft.jsonl"), strict=True))
    tasks = {run_id: rows[run_id]["messages"][1]["content"] for run_id in (first, second)}
    assert tasks[first].startswith("How many moons has Mars?") and summary not in tasks[first]
    assert tasks[second].startswith(render_enhanced_task("How many moons has Mars?", [summary]))
    # Neither sample holds the other attempt's replies.
    replies = {run_id: [m["content"] for m in rows[run_id]["messages"] if m["role"] == "assistant"] for run_id in rows}
    assert not any("boxed{2}" in r or "Two moons" in r for r in replies[first])
    assert replies[second][0] == "<think>\nTwo.\n</think>\n\nTwo moons." and "Maybe." not in replies[second]
