"""The harness's scoring against a hand-checked table of GAIA normalisation cases.

Each case in tests/golden/gaia_scoring_cases.jsonl was decided by hand from GAIA's rules
(numbers: $ % and thousands commas dropped; lists: split on , and ; element-wise;
strings: whitespace, punctuation and case removed). Prints the agreement per rule kind
and overall, and the scorer's throughput.

    python bench/bench_eval_scoring.py
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.eval.scoring import kind_of, question_scorer

CASES = Path(__file__).resolve().parent.parent / "tests" / "golden" / "gaia_scoring_cases.jsonl"


def main() -> None:
    cases = [json.loads(line) for line in CASES.read_text(encoding="utf-8").splitlines() if line.strip()]
    agree: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for case in cases:
        kind = kind_of(case["truth"])
        total[kind] += 1
        if question_scorer(case["answer"], case["truth"]) is case["correct"]:
            agree[kind] += 1
        else:
            print(f"DISAGREES: {case}")
    for kind in sorted(total):
        print(f"{kind:<7} {agree[kind]:>3}/{total[kind]:<3} agree ({agree[kind] / total[kind]:.2f})")
    overall = sum(agree.values()) / sum(total.values())
    print(f"overall {sum(agree.values())}/{sum(total.values())} hand-checked cases agree: ratio {overall:.2f}")
    started = time.perf_counter()
    rounds = 2000
    for _ in range(rounds):
        for case in cases:
            question_scorer(case["answer"], case["truth"])
    per_call = (time.perf_counter() - started) / (rounds * len(cases))
    print(f"scorer: {per_call * 1e6:.1f} µs per answer")


if __name__ == "__main__":
    main()
