"""The agent loop's own overhead, as a ratio against raw llama-cpp-python generation of the same tokens.

Method: one real run of the loop on a random-weight GGUF (a GBNF grammar makes every turn the
same tool call, an instant tool answers with a 600-character result, K=5), recording every
prompt the loop sent (as tokens) and how many tokens came back. Then the same prompts are sent
to a fresh `Llama` with `create_completion` directly, in the same order (so the KV prefix cache
sees the same reuse pattern), generating the same number of tokens under the same grammar.
Everything the loop does besides the model (prompt rendering, token counting, parsing, context
keeping, events, tool dispatch) shows up as the difference. Loop and raw runs alternate and the
median ratio is reported. Absolute times vary with the machine; the ratio is the figure.

    python bench/bench_loop.py [--turns 30] [--repeats 3] [--n-embd 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.agent.loop import Agent
from appliance.agent.state import new_state
from appliance.config import AgentSettings
from appliance.llm.base import ChatMessage, Purpose, StreamEvent
from appliance.llm.llamacpp import LlamaCppBackend, clear_model_cache
from appliance.protocol.prompt import render_system_prompt, render_task_message
from appliance.tools.base import CallContext, ToolBox
from tests.scripted import ScriptedPython, ScriptedSearch
from tests.tinygguf import write_tiny_gguf

CALL = (
    "<think>\nI will run the next step of the analysis in the sandbox.\n</think>\n\n<use_mcp_tool>\n"
    "<server_name>tool-python</server_name>\n<tool_name>run_command</tool_name>\n<arguments>\n"
    '{"command": "python analyse.py --step next", "sandbox_id": "sbx-1"}\n</arguments>\n</use_mcp_tool>'
)
SUMMARY = "The analysis is complete. \\boxed{42}"


def literal(text: str) -> str:
    return "root ::= " + json.dumps(text)


class RecordingBackend(LlamaCppBackend):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls: list[tuple[list[int], int, Purpose]] = []
        self.inside = 0.0  # seconds spent inside the backend's generator (model + its own rendering)

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        purpose: Purpose = "turn",
        cancel: threading.Event | None = None,
    ) -> Iterator[StreamEvent]:
        prompt = self.render_tokens(messages)
        inner = super().stream_chat(messages, max_tokens=max_tokens, purpose=purpose, cancel=cancel)
        while True:
            started = time.perf_counter()
            try:
                event = next(inner)
            except StopIteration:
                self.inside += time.perf_counter() - started
                return
            self.inside += time.perf_counter() - started
            if event.__class__.__name__ == "Completion":
                self.calls.append((prompt, event.completion_tokens, purpose))  # type: ignore[union-attr]
            yield event


def run_loop(model: Path, grammars: tuple[Path, Path], turns: int, workdir: Path) -> tuple[float, RecordingBackend]:
    clear_model_cache()
    backend = RecordingBackend(
        model, context_length=32768, temperature=0.0, seed=1, grammar=str(grammars[0]), summary_grammar=str(grammars[1])
    )
    tool_output = "result line with some numbers 12345\n" * 16  # ~600 characters
    toolbox = ToolBox([ScriptedPython(lambda command: tool_output), ScriptedSearch()])
    ctx = CallContext("bench", workdir, workdir / "ws", workdir / "out", timeout=60)
    agent = Agent(backend, toolbox, AgentSettings(max_turns=turns, keep_last=5), ctx, max_tokens=400)
    task = "Analyse the dataset step by step."
    state = new_state(
        "bench", task, render_task_message(task), render_system_prompt(dt.date(2025, 1, 1), toolbox.server_specs())
    )
    started = time.perf_counter()
    events = list(agent.run(state))
    elapsed = time.perf_counter() - started
    assert events[-1].status == "answered", events[-1]  # type: ignore[attr-defined]
    return elapsed, backend


def run_raw(model: Path, grammars: tuple[Path, Path], calls: list[tuple[list[int], int, Purpose]]) -> float:
    from llama_cpp import Llama
    from llama_cpp.llama_grammar import LlamaGrammar

    llm = Llama(model_path=str(model), n_ctx=32768, seed=1, verbose=False)
    texts = {"turn": grammars[0].read_text(), "summary": grammars[1].read_text()}
    started = time.perf_counter()
    for prompt, generated, purpose in calls:
        grammar = LlamaGrammar.from_string(texts[purpose], verbose=False)
        for _ in llm.create_completion(
            prompt,
            max_tokens=generated,
            temperature=0.0,
            top_p=0.95,
            repeat_penalty=1.05,
            grammar=grammar,
            stop=["<|im_end|>"],
            stream=True,
        ):
            pass
    elapsed = time.perf_counter() - started
    del llm
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = write_tiny_gguf(work / "bench.gguf", n_embd=args.n_embd, n_layer=args.layers, n_ff=args.n_embd * 2,
                                context_length=32768)  # fmt: skip
        grammars = (work / "turn.gbnf", work / "summary.gbnf")
        grammars[0].write_text(literal(CALL))
        grammars[1].write_text(literal(SUMMARY))
        ratios, loop_times, raw_times, outside = [], [], [], []
        for repeat in range(args.repeats):
            loop_time, backend = run_loop(model, grammars, args.turns, work / f"run{repeat}")
            raw_time = run_raw(model, grammars, backend.calls)
            ratios.append(loop_time / raw_time)
            outside.append((loop_time - backend.inside) / loop_time)
            loop_times.append(loop_time)
            raw_times.append(raw_time)
            prompt_total = sum(len(p) for p, _, _ in backend.calls)
            generated_total = sum(g for _, g, _ in backend.calls)
        print(f"model: n_embd={args.n_embd} layers={args.layers}; {args.turns} turns + summary, K=5")
        calls = len(backend.calls)
        print(f"per run: {calls} model calls, {prompt_total:,} prompt tokens, {generated_total:,} generated")
        print(f"loop wall time   (median): {statistics.median(loop_times):.3f} s")
        print(f"raw llama.cpp    (median): {statistics.median(raw_times):.3f} s")
        median = statistics.median(ratios)
        print(f"loop / raw ratio (median of {args.repeats}): {median:.3f}  -> loop overhead {100 * (median - 1):+.1f}%")
        print("ratios: " + ", ".join(f"{r:.3f}" for r in ratios))
        share = statistics.median(outside)
        print(f"time outside the model backend, same runs (median): {100 * share:.2f}% of the loop's wall time")


if __name__ == "__main__":
    main()
