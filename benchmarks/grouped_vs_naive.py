"""Grouped vs naive execution on the real CPU pool (Symbolic-MoE section 3.4's batching claim).

The same 12 questions x 3 experts of pools/cpu-demo.yaml (32 new tokens at most), once with the
grouped executor (each expert loaded once, all its prompts in one batch) and once with the naive
per-instance executor (the expert loaded for every single (question, expert) pair), in one
process. Prints loads and wall time of each, the speed-up, and the orchestration overhead (wall
time minus the backends' own load/generate/release seconds) as a share of wall time.

Targets: grouped >= 7.6x faster than naive (the paper's one-GPU ratio) with loads == 3;
overhead <= 10% of wall time.

    .venv/bin/python benchmarks/grouped_vs_naive.py [--questions 12] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator import Orchestrator  # noqa: E402
from orchestrator.benchmarks.readers import read_benchmark  # noqa: E402


def measure(executor: str, queries, args) -> dict:
    with Orchestrator.from_files(
        ROOT / "pools" / "cpu-demo.yaml", ROOT / "configs" / "cpu-demo.yaml",
        executor=executor, max_tokens=args.max_tokens, threads=args.threads,
    ) as orch:
        result = orch.evaluate(queries)
    return {
        "executor": executor,
        "loads": result.stats.loads_total,
        "calls": sum(s.calls for s in result.stats.experts.values()),
        "tokens_out": sum(s.tokens_out for s in result.stats.experts.values()),
        "wall_s": round(result.wall_s, 2),
        "load_s": round(sum(s.load_s for s in result.stats.experts.values()), 2),
        "generate_s": round(sum(s.generate_s for s in result.stats.experts.values()), 2),
        "overhead_s": round(result.overhead_s, 3),
        "overhead_share": round(result.overhead_s / result.wall_s, 4),
        "accuracy": result.accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args()

    queries = read_benchmark(ROOT / "samples" / "demo.jsonl", limit=args.questions)
    # Warm-up outside the timings: converts the GGUF once if the cache is cold.
    with Orchestrator.from_files(ROOT / "pools" / "cpu-demo.yaml", experts=["smol-reasoner"],
                                 max_tokens=1, threads=args.threads) as orch:
        orch.run(queries[:1])

    grouped = measure("grouped", queries, args)
    naive = measure("naive", queries, args)
    speedup = naive["wall_s"] / grouped["wall_s"]

    print(f"{args.questions} questions x 3 experts, max {args.max_tokens} new tokens, "
          f"{args.threads} threads")
    print(f"{'executor':<9} {'loads':>5} {'calls':>5} {'tok out':>7} {'wall s':>8} {'load s':>7} "
          f"{'gen s':>7} {'overhead':>9}")
    for row in (grouped, naive):
        print(f"{row['executor']:<9} {row['loads']:>5} {row['calls']:>5} {row['tokens_out']:>7} "
              f"{row['wall_s']:>8.2f} {row['load_s']:>7.2f} {row['generate_s']:>7.2f} "
              f"{100 * row['overhead_share']:>8.2f}%")
    print(f"speed-up grouped vs naive: {speedup:.2f}x (target >= 7.6x); grouped loads "
          f"{grouped['loads']} (target 3); grouped overhead {100 * grouped['overhead_share']:.2f}% "
          "of wall (target <= 10%)")
    if args.json:
        args.json.write_text(json.dumps({"grouped": grouped, "naive": naive,
                                         "speedup": round(speedup, 2)}, indent=2))


if __name__ == "__main__":
    main()
