"""Run every task of a dataset K times, headless, each run stored in the history with an eval tag.

Progress is kept in RESULTS (one JSON line per finished run, written and synced
before the next run is counted), so an interrupted eval started again with the
same output directory skips what is done and resumes runs that were cut off.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.agent.events import AgentEvent, RunStarted
from appliance.config import Settings
from appliance.eval.dataset import EvalTask
from appliance.eval.judge import Judge
from appliance.eval.scoring import question_scorer
from appliance.policy import RunStatus, Standing
from appliance.session import Backends, RunSession, resume_session, start_session
from appliance.store import History, open_history
from appliance.tools.archive import save_task_archive

RESULTS = "results.jsonl"


@dataclass(frozen=True)
class RunResult:
    task_id: str
    run_index: int
    run_id: str
    level: str
    expected: str
    answer: str | None
    status: str
    exact_match: bool
    judge: str | None
    correct: bool
    turns: int
    tool_calls: int
    prompt_tokens: int
    completion_tokens: int
    elapsed_s: float
    error: str | None = None
    web: str = "live"  # live | recorded (into --web-archive) | replayed (from it)
    # The attempt whose end is the task's (agent/attempts.py): a task's attempts are one result,
    # and run_id is that attempt's run (history show of it lists the others).
    attempts: int = 1


def load_results(out_dir: Path) -> list[RunResult]:
    """Finished runs recorded so far (a torn last line from a crash is ignored)."""
    path = out_dir / RESULTS
    if not path.is_file():
        return []
    results = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            results.append(RunResult(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return results


def run_tag(name: str, task_id: str, run_index: int) -> str:
    return f"eval:{name}:{task_id}:{run_index}"


class EvalRunner:
    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        out_dir: Path,
        db_path: Path,
        runs: int = 1,
        concurrency: int = 1,
        judge: Judge | None = None,
        replay: Path | None = None,
        web_archive: Path | None = None,
        on_result: Callable[[RunResult], None] | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.out_dir = out_dir
        self.db_path = db_path
        self.runs = max(1, runs)
        self.concurrency = max(1, concurrency)
        self.judge = judge
        self.replay = replay
        self.web_archive = web_archive
        self.on_result = on_result
        self._write_lock = threading.Lock()
        self._sessions: set[RunSession] = set()
        self._sessions_lock = threading.Lock()
        self._stopping = threading.Event()
        # One model for every run (a replay script is per run: Backends never shares those).
        self._backends = Backends()
        self._local = threading.local()

    # ------------------------------------------------------------ plumbing

    def _history(self) -> History:
        history: History | None = getattr(self._local, "history", None)
        if history is None:
            history = open_history(self.db_path)
            self._local.history = history
        return history

    def _settings_for(self, task: EvalTask) -> Settings:
        """The run's settings: with a directory of replay scripts, this task's own script; with a web
        archive that holds this task's web, that archive only (offline).

        Recorded with the run, so a resumed run replays the same script and the same web.
        """
        settings = self.settings
        if settings.model.backend == "replay" and self.replay is not None and self.replay.is_dir():
            model = dataclasses.replace(settings.model, replay=str(self.replay / f"{task.task_id}.jsonl"))
            settings = dataclasses.replace(settings, model=model)
        recorded = self._task_archive(task)
        if recorded is not None and recorded.is_file():
            archive = dataclasses.replace(settings.archive, web=f"archive:{recorded}")
            settings = dataclasses.replace(settings, archive=archive)
        return settings

    def _task_archive(self, task: EvalTask) -> Path | None:
        return self.web_archive / f"{task.task_id}.warc.gz" if self.web_archive is not None else None

    def _keep_web(self, task: EvalTask, settings: Settings, run_id: str) -> str:
        """After a live run: its archive becomes the task's recorded web (first pass). The run's web mode."""
        target = self._task_archive(task)
        if target is None:
            return "live"
        if settings.archive.web.startswith("archive:"):
            return "replayed"
        with self._write_lock:
            if not target.is_file():
                save_task_archive(settings.dirs.run_dir(run_id), run_id, target)
        return "recorded"

    @contextmanager
    def _tracked(self, session: RunSession) -> Iterator[RunSession]:
        with self._sessions_lock:
            self._sessions.add(session)
        try:
            if self._stopping.is_set():
                session.cancel()
            with session:
                yield session
        finally:
            with self._sessions_lock:
                self._sessions.discard(session)

    def stop(self) -> None:
        """Cancel every running task (Ctrl-C); their runs end as interrupted and resume next time."""
        self._stopping.set()
        with self._sessions_lock:
            for session in self._sessions:
                session.cancel()

    def _record(self, result: RunResult) -> None:
        with self._write_lock:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with (self.out_dir / RESULTS).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(asdict(result), ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        if self.on_result is not None:
            self.on_result(result)

    # ------------------------------------------------------------ one run

    def _interrupted_run(self, tag: str) -> str | None:
        for summary in self._history().list_runs(limit=5, tag=tag):
            # Left `running` by an eval that was killed: the store marks those interrupted on opening.
            if RunStatus.of(summary.status).standing is not Standing.FINISHED:
                return summary.run_id
        return None

    def run_one(self, task: EvalTask, run_index: int) -> RunResult | None:
        """One run of one task; None when it was cancelled (it will resume next time)."""
        history = self._history()
        tag = run_tag(self.name, task.task_id, run_index)
        started = time.monotonic()

        def forward(event: AgentEvent) -> None:
            if isinstance(event, RunStarted) and not event.resumed:
                history.tag_run(event.run_id, f"eval:{self.name}")
                history.tag_run(event.run_id, tag)

        previous = self._interrupted_run(tag)
        if previous is not None:
            session = resume_session(history, previous, backends=self._backends)
        else:
            attachments = [task.attachment] if task.attachment else []
            session = start_session(
                history, self._settings_for(task), task.question, backends=self._backends, attachments=attachments
            )
        with self._tracked(session):
            finished = session.drive(forward)
        if RunStatus.of(finished.status) is RunStatus.INTERRUPTED:
            return None
        web = self._keep_web(task, session.settings, finished.run_id)
        exact = question_scorer(finished.answer, task.answer)
        verdict = self.judge.grade(task.question, task.answer, finished.answer) if self.judge else None
        result = RunResult(
            task_id=task.task_id,
            run_index=run_index,
            run_id=finished.run_id,
            level=task.level,
            expected=task.answer,
            answer=finished.answer,
            status=finished.status,
            exact_match=exact,
            judge=verdict,
            correct=(verdict == "CORRECT") if verdict is not None else exact,
            turns=finished.turns,
            tool_calls=finished.tool_calls,
            prompt_tokens=finished.prompt_tokens,
            completion_tokens=finished.completion_tokens,
            elapsed_s=round(finished.elapsed_s if finished.elapsed_s else time.monotonic() - started, 3),
            error=finished.error,
            web=web,
            attempts=finished.attempt,
        )
        self._record(result)
        return result

    # ------------------------------------------------------------ all of it

    def pending(self, tasks: Sequence[EvalTask]) -> list[tuple[EvalTask, int]]:
        done = {(r.task_id, r.run_index) for r in load_results(self.out_dir)}
        return [(task, k) for k in range(1, self.runs + 1) for task in tasks if (task.task_id, k) not in done]

    def run(self, tasks: Sequence[EvalTask]) -> bool:
        """Run what is pending; True when everything finished, False when stopped (Ctrl-C)."""
        queue = self.pending(tasks)
        try:
            with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="eval") as pool:
                running: set[Future[RunResult | None]] = set()
                while queue or running:
                    while queue and len(running) < self.concurrency and not self._stopping.is_set():
                        task, index = queue.pop(0)
                        running.add(pool.submit(self.run_one, task, index))
                    if not running:
                        break
                    try:
                        done, running = _wait(running)
                    except KeyboardInterrupt:
                        self.stop()
                        continue
                    for future in done:
                        future.result()  # a bug in a run surfaces here rather than vanishing
        finally:
            self._backends.close()
        return not self._stopping.is_set() and not self.pending(tasks)


def _wait(running: set[Future[RunResult | None]]) -> tuple[set[Future[RunResult | None]], set[Future[Any]]]:
    done, not_done = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
    return set(done), set(not_done)
