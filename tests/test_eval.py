"""The evaluation harness: scoring rules, the dataset parser, end-to-end runs, resume, the judge."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.eval.dataset import parse_dataset
from appliance.eval.judge import parse_verdict
from appliance.eval.report import scores
from appliance.eval.runner import RunResult, load_results
from appliance.eval.scoring import kind_of, question_scorer
from appliance.store import open_history
from tests.conftest import REPO_ROOT, cli_env, run_cli, tool_call, write_replay

GOLDEN = Path(__file__).parent / "golden"


def cases() -> list[dict[str, object]]:
    return [json.loads(line) for line in (GOLDEN / "gaia_scoring_cases.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", cases(), ids=lambda c: str(c["why"]))
def test_gaia_scoring_matches_the_hand_checked_table(case: dict[str, object]) -> None:
    assert question_scorer(case["answer"], str(case["truth"])) is case["correct"]  # type: ignore[arg-type]


def test_scoring_rule_kinds() -> None:
    assert [kind_of(t) for t in ("42", "-1.5e3", "a, b", "a; b", "Paris")] == [
        "number", "number", "list", "list", "string",
    ]  # fmt: skip


def test_judge_verdicts() -> None:
    assert parse_verdict("Correct") == "CORRECT"
    assert parse_verdict(" incorrect. ") == "INCORRECT"
    assert parse_verdict("<think>hmm, they match</think>\nCorrect") == "CORRECT"
    assert parse_verdict("It is probably correct") == "NOT_ATTEMPTED"


def test_dataset_parser_reports_bad_rows_and_keeps_the_rest(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    rows = [
        '{"task_id": "t1", "Question": "Q1?", "Final answer": "1", "Level": 1}',
        "not json at all",
        '{"task_id": "t2", "Question": "", "Final answer": "2"}',
        '["a", "list"]',
        '{"task_id": "t1", "Question": "again", "Final answer": "3"}',
        '{"task_id": "t3", "Question": "Q3?", "Final answer": 7, "Level": "2", "file_name": "data.csv"}',
        '{"task_id": "t4", "Question": "Q4?", "Final answer": "x", "file_name": "missing.pdf"}',
        "",
        '{"task_id": 5, "Question": "Q5?", "Final Answer": "five"}',
    ]
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    tasks, errors = parse_dataset(path)
    assert [(t.task_id, t.answer, t.level) for t in tasks] == [("t1", "1", "1"), ("t3", "7", "2"), ("5", "five", "?")]
    assert tasks[1].attachment == (tmp_path / "data.csv").resolve()
    assert [(e.line, e.message.split(" (")[0]) for e in errors] == [
        (2, "not JSON"),
        (3, "missing or empty Question"),
        (4, "not a JSON object"),
        (5, "duplicate task_id 't1'"),
        (7, "attachment 'missing.pdf' not found next to the dataset"),
    ]


def _result(task: str, k: int, correct: bool, level: str = "1") -> RunResult:
    return RunResult(task, k, f"r-{task}-{k}", level, "x", "y", "answered", correct, None, correct, 1, 1, 10, 5, 1.0)


def test_avg_and_pass_at_k() -> None:
    results = [_result("a", 1, True), _result("a", 2, False), _result("b", 1, False), _result("b", 2, False)]
    s = scores(results)
    assert (s.tasks, s.runs) == (2, 4)
    assert s.avg_at_k == pytest.approx(25.0)  # a: 1/2, b: 0/2
    assert s.pass_at_k == pytest.approx(50.0)  # a passed once


def test_sample_eval_with_replay_end_to_end(appliance_home: Path) -> None:
    result = run_cli(["eval", "--sample", "--backend", "replay", "--runs", "2"], timeout=300)
    assert result.returncode == 0, result.stderr
    out_dir = appliance_home / "evals" / "sample"
    results = load_results(out_dir)
    assert len(results) == 12 and {r.run_index for r in results} == {1, 2}
    by_task = {r.task_id: r for r in results if r.run_index == 1}
    assert by_task["sample-01"].answer == "2019" and by_task["sample-01"].correct
    assert by_task["sample-04"].answer == "1" and not by_task["sample-04"].correct  # the scripted wrong answer
    assert by_task["sample-02"].tool_calls == 1  # it really searched the sample corpus
    assert "sample: avg@2 83.3%  pass@2 83.3%" in result.stdout
    report = (out_dir / "report.md").read_text(encoding="utf-8")
    assert "| avg@2 | 83.3% |" in report and "| 2 | 2 | 50.0% | 50.0% | 50.0% |" in report
    assert "Published MiroThinker v1.0 figures" in report and "| 8B | 21.5 | 31.1 | 40.2 | 66.4 | 60.6 |" in report
    with (out_dir / "report.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and rows[0]["task_id"] == "sample-01"
    # Every run is in the history, tagged with the eval and its task.
    history = open_history(appliance_home / "history.db")
    try:
        tagged = history.list_runs(limit=100, tag="eval:sample")
        assert len(tagged) == 12
        one = history.list_runs(tag="eval:sample:sample-03:2")
        assert len(one) == 1 and one[0].answer == "1245000, Mira Okafor"
    finally:
        history.close()


def test_an_interrupted_eval_resumes_where_it_stopped(appliance_home: Path, tmp_path: Path) -> None:
    replays = tmp_path / "replays"
    replays.mkdir()
    dataset = tmp_path / "mini.jsonl"
    rows = []
    for i in range(1, 5):
        rows.append(json.dumps({"task_id": f"m{i}", "Question": f"What is {i} + {i}?", "Final answer": str(2 * i)}))
        turns = [
            {"content": tool_call("nowhere", "think", {"about": str(i)})},
            {"content": "Working it out slowly.", "delay": 1.5 if i == 2 else 0},
            {"content": f"\\boxed{{{2 * i}}}"},
        ]
        (replays / f"m{i}.jsonl").write_text("".join(json.dumps(t) + "\n" for t in turns), encoding="utf-8")
    dataset.write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = ["eval", str(dataset), "--backend", "replay", "--replay", str(replays)]
    env = cli_env({"APPLIANCE_HOME": str(appliance_home), "APPLIANCE_TOOLS_ENABLED": ""})
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=REPO_ROOT,
    )  # fmt: skip
    out_dir = appliance_home / "evals" / "mini"
    deadline = time.monotonic() + 60
    while len(load_results(out_dir)) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # task m2 is streaming its slow turn now
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "run the same command again to continue" in stderr
    done_first = {r.task_id for r in load_results(out_dir)}
    assert "m1" in done_first and len(done_first) < 4

    again = run_cli(args, env={"APPLIANCE_TOOLS_ENABLED": ""})
    assert again.returncode == 0, again.stderr
    assert f"resuming mini: {len(done_first)} of 4 runs already done" in again.stderr
    final = load_results(out_dir)
    assert sorted(r.task_id for r in final) == ["m1", "m2", "m3", "m4"]  # each exactly once
    assert all(r.correct for r in final)
    history = open_history(appliance_home / "history.db")
    try:
        m2_runs = history.list_runs(tag="eval:mini:m2:1")
        assert len(m2_runs) == 1 and m2_runs[0].status == "answered"  # the interrupted run was resumed, not redone
    finally:
        history.close()


def test_eval_refuses_a_dataset_without_usable_rows(appliance_home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"Question": "no id"}\nnot json\n', encoding="utf-8")
    result = run_cli(["eval", str(bad), "--backend", "replay"])
    assert result.returncode == 2
    assert "line 1 skipped: missing or empty task_id" in result.stderr
    assert "no usable task" in result.stderr
    neither = run_cli(["eval"])
    assert neither.returncode == 2 and "--sample" in neither.stderr


def test_sample_eval_on_the_tiny_llama_cpp_model(appliance_home: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    """The real llama.cpp path end to end: random weights answer wrongly, but every run completes and is scored."""
    env = {
        "APPLIANCE_MODEL_MAX_TOKENS": "48",
        "APPLIANCE_MODEL_CONTEXT_LENGTH": "16384",
        "APPLIANCE_SUMMARY_RETRIES": "1",
    }
    result = run_cli(
        ["eval", "--sample", "--backend", "llamacpp", "--model", str(tiny_gguf), "--max-turns", "2", "--limit", "2"],
        env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = load_results(appliance_home / "evals" / "sample")
    assert [r.task_id for r in results] == ["sample-01", "sample-02"]
    assert all(r.status in ("answered", "no_answer") and r.prompt_tokens > 1000 for r in results)
    assert "avg@1" in result.stdout


def test_llm_judge_over_an_openai_compatible_server(appliance_home: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    from tests.test_openai_backend import LlamaServer

    server = LlamaServer(tiny_gguf)
    try:
        grammar = tmp_path / "judge.gbnf"
        grammar.write_text('root ::= "Correct"', encoding="utf-8")  # a judge that always agrees
        result = run_cli(
            ["eval", "--sample", "--backend", "replay", "--limit", "4", "--judge-url", server.base_url],
            env={"APPLIANCE_JUDGE_GRAMMAR": str(grammar)}, timeout=300,
        )  # fmt: skip
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    results = {r.task_id: r for r in load_results(appliance_home / "evals" / "sample")}
    assert all(r.judge == "CORRECT" and r.correct for r in results.values())
    assert not results["sample-04"].exact_match  # the judge overrules exact match, which is still reported
    report = (appliance_home / "evals" / "sample" / "report.md").read_text(encoding="utf-8")
    assert "LLM judge" in report and "| exact match avg@1 | 75.0% |" in report


def test_hostile_file_names_are_row_errors_and_the_rest_runs(appliance_home: Path, tmp_path: Path) -> None:
    """A dataset's file_name stays in the dataset's folder: no absolute path, '..' or link leaves it."""
    folder, replays = tmp_path / "data", tmp_path / "replays"
    folder.mkdir()
    replays.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret\n", encoding="utf-8")
    (folder / "in.csv").write_text("a\n1\n", encoding="utf-8")
    (folder / "sub").mkdir()
    (folder / "link.csv").symlink_to(secret)
    (folder / "sub" / "deep-link.csv").symlink_to("../../secret.txt")
    names = {
        "ok": "in.csv",
        "ok-dotdot-inside": "sub/../in.csv",
        "absolute": str(secret),
        "parent": "../secret.txt",
        "link": "link.csv",
        "deep-link": "sub/deep-link.csv",
    }
    rows = [json.dumps({"task_id": t, "Question": "Q?", "Final answer": "1", "file_name": n}) for t, n in names.items()]
    rows.append(json.dumps({"task_id": "../escape", "Question": "Q?", "Final answer": "1"}))
    for task_id in names:
        write_replay(replays / f"{task_id}.jsonl", ["The answer is \\boxed{1}.", "\\boxed{1}"])
    dataset = folder / "hostile.jsonl"
    dataset.write_text("\n".join(rows) + "\n", encoding="utf-8")

    tasks, errors = parse_dataset(dataset)
    assert [t.task_id for t in tasks] == ["ok", "ok-dotdot-inside"]
    assert {t.attachment for t in tasks} == {(folder / "in.csv").resolve()}
    assert [e.line for e in errors] == [3, 4, 5, 6, 7]
    assert all("leaves the dataset's folder" in e.message for e in errors[:4])
    assert "cannot be a file name" in errors[4].message

    done = run_cli(["eval", str(dataset), "--backend", "replay", "--replay", str(replays)],
                   env={"APPLIANCE_TOOLS_ENABLED": ""}, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for line in (3, 4, 5, 6):
        assert f"line {line} skipped: file_name" in done.stderr
    results = load_results(appliance_home / "evals" / "hostile")
    assert sorted(r.task_id for r in results) == ["ok", "ok-dotdot-inside"], results
    assert all(r.correct for r in results), results
    history = open_history(appliance_home / "history.db")
    try:
        attached = {a for run in history.list_runs(limit=100) for a in history.get_run(run.run_id).attachments}
    finally:
        history.close()
    assert attached == {str((folder / "in.csv").resolve())}
