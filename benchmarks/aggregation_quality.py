"""Weighted vote against plain majority, and early exit, on recorded answers of real LLMs.

The 13-model replay pool, k=3, every profile router; for each: the plain majority vote of the
chosen experts, the weighted vote (log-odds of the profile's estimated success, and `auto`, the
default), and early exit (how often all experts agree, and what skipping the aggregator then
costs). Uses the profile that benchmarks/replay_quality.py caches in runs/replay-profiles/
(built there if missing).

Target: weighted vote >= plain majority of the same experts.

    .venv/bin/python benchmarks/aggregation_quality.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from replay_quality import POOLS, TEST_DATA, profile_for  # noqa: E402

from orchestrator import Orchestrator  # noqa: E402
from orchestrator.benchmarks.readers import read_benchmark  # noqa: E402


def accuracy(pool, profile, queries, router, **aggregation) -> tuple[float, int]:
    with Orchestrator.from_files(pool, router=router, k=3, profile=str(profile),
                                 aggregation=aggregation or None) as orch:
        result = orch.evaluate(queries)
    exits = sum(a.aggregator == "early-exit" for a in result.answers)
    return result.accuracy, exits


def main() -> None:
    if not TEST_DATA.is_file():
        raise SystemExit(f"needs the replay data beside the project: {TEST_DATA}")
    os.chdir(ROOT)
    pool = POOLS["small (13)"]
    profile = profile_for(pool)
    queries = read_benchmark(TEST_DATA)
    print(f"{'router':<14} {'plain':>8} {'log-odds':>9} {'auto':>8} {'auto-plain':>11} "
          f"{'early exits':>12} {'exit cost':>10}")
    for router in ("ensemble", "knn", "topk", "symbolic-moe"):
        plain, _ = accuracy(pool, profile, queries, router, weighting="none")
        logodds, _ = accuracy(pool, profile, queries, router, weighting="log-odds")
        auto, _ = accuracy(pool, profile, queries, router)
        early, exits = accuracy(pool, profile, queries, router, early_exit=True)
        print(f"{router:<14} {100 * plain:7.2f}% {100 * logodds:8.2f}% {100 * auto:7.2f}% "
              f"{100 * (auto - plain):+10.2f} {exits:>5}/{len(queries)} "
              f"{100 * (early - auto):+9.2f}")


if __name__ == "__main__":
    main()
