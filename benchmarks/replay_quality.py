"""Routing quality on recorded answers of real LLMs (issue 3's targets), in one go.

Profiles every replay pool on ../shared/data/replay/mmlu_pro_replay_profile.jsonl (cached under
runs/replay-profiles/, rebuilt when missing), routes the 2,090 test questions from their text
only (no domain or subject at routing time), k=3, vote aggregation, and prints one table:
router x pool -> accuracy, mean k, distinct experts, wall seconds, routing questions/s. Also:
the paper-faithful setting (symbolic-moe on a profile of the 348 items of Symbolic-MoE's own
validation split), adaptive k and load-aware rows, the reference points (best single expert,
majority of all, oracle), and the full `orchestrate run` of the default router as a user runs
it (a fresh process, a cold embedding cache, the profile cached).

Targets: 13-model pool >= 52.0%, 28-model pool >= 73.5%; the full run <= 45 s; routing
>= 20,000 questions/s.

Cost table (issue 16): per pool, accuracy with its 95% Wilson interval and mean expert calls per
question of the best single expert, the ensemble router at fixed k = 1..5 (--fixed-k, escalation
none), k chosen by evidence (cap 5, the default), lossless escalation at k=3 and at the best
fixed k (asserted equal to the fixed-k vote question by question), confident escalation
(agreement 1.0, at least 2 votes) at k=5, and the default pipeline (k by evidence, lossless),
also with a call cost (each further expert must win back 0.5 or 1 point on validation);
evidence-chosen k against the best fixed k with a paired bootstrap interval. Then the other
profile routers at fixed k=3 and with k by evidence (cap 5). Targets: lossless <= 2.6 calls on
the 13-model pool and <= 2.2 on the 28-model pool, evidence k at least as accurate as the best
fixed k. Beside it, the lower bound on lossless calls at k=3 for any calling order of the
chosen ensembles (in hindsight, on the test questions).

    .venv/bin/python benchmarks/replay_quality.py [--quick] [--skip-cli] [--cost-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from orchestrator import Orchestrator  # noqa: E402
from orchestrator.benchmarks.intervals import paired_bootstrap, wilson  # noqa: E402
from orchestrator.benchmarks.readers import read_benchmark  # noqa: E402
from orchestrator.evaluation import all_expert_answers, reference_points  # noqa: E402
from orchestrator.pipeline import Overrides  # noqa: E402
from orchestrator.profiling.profile import Profile  # noqa: E402
from orchestrator.skills import DEFAULT_VOCABULARY, load_vocabulary  # noqa: E402

REPLAY = ROOT.parent / "shared" / "data" / "replay"
PROFILE_DATA = REPLAY / "mmlu_pro_replay_profile.jsonl"
TEST_DATA = REPLAY / "mmlu_pro_replay_test.jsonl"
POOLS = {"small (13)": ROOT / "pools" / "replay-mmlu-pro-small.yaml",
         "all (28)": ROOT / "pools" / "replay-mmlu-pro-all.yaml"}
CACHE = ROOT / "runs" / "replay-profiles"
TARGETS = {"small (13)": 0.52, "all (28)": 0.735}
CALL_TARGETS = {"small (13)": 2.6, "all (28)": 2.2}  # lossless escalation, mean calls


def profile_for(pool: Path, split: str | None = None) -> Path:
    """Build (or reuse) the embedding-annotated profile of a pool."""
    name = pool.stem + (f"-{split}" if split else "")
    path = CACHE / f"{name}.json"
    if path.is_file():
        return path
    queries = read_benchmark(PROFILE_DATA)
    if split:
        queries = [q for q in queries
                   if any(t.get("split") == split for t in q.meta.get("symbolic_moe") or [])]
    start = time.perf_counter()
    with Orchestrator.from_files(pool, router="fixed", k=1, threads=2) as orch:
        prof = orch.build_profile(queries, orch.annotator, orch.embedder,
                             vocabulary=load_vocabulary(DEFAULT_VOCABULARY).skills)
    prof.meta.update({"data": "mmlu_pro_replay_profile.jsonl", "split": split})
    prof.save(path)
    print(f"  built {path.relative_to(ROOT)} on {len(queries)} questions "
          f"in {time.perf_counter() - start:.0f}s", flush=True)
    return path


def measure(pool: Path, profile: Path, queries, router: str, **routing) -> dict:
    routing = {"k_by_evidence": False, **routing}  # issue 3's table: exactly k=3
    start = time.perf_counter()
    with Orchestrator.from_files(pool, router=router, k=3, profile=str(profile), threads=2,
                                 routing=routing or None) as orch:
        result = orch.evaluate(queries)
    return {
        "accuracy": result.accuracy, "mean_k": result.mean_k,
        "distinct": result.distinct_experts, "wall_s": time.perf_counter() - start,
        "route_qps": len(queries) / max(result.stage_s["route_s"], 1e-9),
    }


def references(pool: Path, queries) -> dict:
    with Orchestrator.from_files(pool, router="fixed", k=1) as orch:
        refs = reference_points(queries, *all_expert_answers(orch.generation, queries))
    return {"best_single": refs["best_single"]["accuracy"], "majority_all": refs["majority_all"],
            "oracle": refs["oracle"]}


def cli_run(pool: Path, profile: Path) -> dict:
    """`orchestrate run` as a user runs it: a new process, no embedding cache, profile cached."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ORCHESTRATOR_CACHE": str(Path(tmp) / "cache")}
        out = Path(tmp) / "out"
        start = time.perf_counter()
        proc = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "orchestrate"), "run", str(TEST_DATA), "--pool",
             str(pool), "--profile", str(profile), "--k", "3", "--out", str(out),
             "--no-progress", "--no-baselines"],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )
        wall = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"orchestrate run failed:\n{proc.stderr[-2000:]}")
        summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": wall, "accuracy": summary["accuracy"], "router": summary["router"],
            "annotate_s": summary.get("annotate_s"), "route_qps": summary.get("route_qps")}


def cost_point(label: str, answers) -> dict:
    """Accuracy, its 95% Wilson interval and mean expert calls of one system's answers."""
    marks = [bool(a.correct) for a in answers]
    ci = wilson(sum(marks), len(marks))
    return {"system": label, "accuracy": ci.estimate, "low": ci.low, "high": ci.high,
            "calls": sum(len(a.outputs) for a in answers) / len(answers),
            "mean_k": sum(len(a.selection.experts) for a in answers) / len(answers),
            "marks": marks, "answers": [a.final_answer for a in answers]}


def cost_rows(pool: Path, profile: Path, queries, shrinkage: float | None = None) -> list[dict]:
    """The issue-16 systems on one pool: best single, fixed k 1..5, k by evidence, lossless and
    confident escalation. Lossless is asserted to give the fixed-k vote question by question."""
    with Orchestrator.from_files(pool, router="fixed", k=1) as orch:
        refs = reference_points(queries, *all_expert_answers(orch.generation, queries))
        best = refs["best_single"]["expert"]
        single = orch.evaluate(queries, Overrides(expert=best)).answers
    rows = [cost_point(f"best single ({best})", single)]
    routing = {} if shrinkage is None else {"ensemble_shrinkage": shrinkage}
    with Orchestrator.from_files(pool, router="ensemble", k=5, profile=str(profile), threads=2,
                                 routing={"k_by_evidence": False, **routing}) as orch:
        fixed = {k: orch.evaluate(queries, Overrides(k=k, escalation="none")).answers
                 for k in range(1, 6)}
        rows += [cost_point(f"fixed k={k}", fixed[k]) for k in fixed]
        best_k = max(fixed, key=lambda k: (rows[k]["accuracy"], -k))  # ties to the smaller
        for k in sorted({3, best_k}):
            lossless = orch.evaluate(queries, Overrides(k=k, escalation="lossless")).answers
            same = [a.final_answer for a in lossless] == [a.final_answer for a in fixed[k]]
            assert same, f"lossless escalation at k={k} changed an answer of the k={k} vote"
            rows.append(cost_point(f"lossless escalation, k={k}"
                                   + (" (best fixed k)" if k == best_k else ""), lossless))
            rows[-1]["floor"] = lossless_floor(fixed[k], k)
        confident = orch.evaluate(queries, Overrides(k=5, escalation="confident")).answers
        rows.append(cost_point("confident escalation, k=5 (agreement 1.0, >= 2 votes)",
                               confident))
    with Orchestrator.from_files(pool, router="ensemble", k=5, profile=str(profile), threads=2,
                                 routing={"k_by_evidence": True, **routing},
                                 escalation={"mode": "none"}) as orch:
        evidence = orch.evaluate(queries).answers
        _, table = orch.pipeline.router().evidence_table(5, list(range(len(orch.pool.experts))))
    point = cost_point("k by evidence (cap 5)", evidence)
    point["prior_weight"] = table.shrinkage
    diff = paired_bootstrap(point["marks"], rows[best_k]["marks"])
    point.update(best_k=best_k, diff=diff)
    rows.append(point)
    with Orchestrator.from_files(pool, router="ensemble", k=5, profile=str(profile), threads=2,
                                 routing={"k_by_evidence": True, **routing}) as orch:
        rows.append(cost_point("k by evidence + lossless escalation (the default)",
                               orch.evaluate(queries).answers))
    for cost in (0.005, 0.01):  # each further expert must win back this share of questions
        with Orchestrator.from_files(pool, router="ensemble", k=5, profile=str(profile),
                                     threads=2, routing={"call_cost": cost, **routing}) as orch:
            rows.append(cost_point(f"  the same, --call-cost {cost}", orch.evaluate(queries).answers))
    for router in ("topk", "knn", "symbolic-moe"):
        for label, k, by_evidence in (("fixed k=3", 3, False), ("k by evidence (cap 5)", 5, True)):
            with Orchestrator.from_files(pool, router=router, k=k, profile=str(profile),
                                         threads=2, routing={"k_by_evidence": by_evidence},
                                         escalation={"mode": "none"}) as orch:
                rows.append(cost_point(f"{router}, {label}", orch.evaluate(queries).answers))
    return rows


def lossless_floor(answers, k: int) -> float | None:
    """The fewest mean calls any fixed calling order per ensemble could give the k=3 (plain)
    vote on these questions, in hindsight: 2 calls, plus a third wherever the third expert's
    answer could still change the vote of the first two called (for the pair of each ensemble
    that needs the third least often)."""
    if k != 3:
        return None
    import itertools

    from orchestrator.aggregation.vote import majority

    def decided(said: dict, order: tuple[str, ...], pair: tuple[str, str]) -> bool:
        third = next(e for e in order if e not in pair)
        outcomes = {majority([said.get(e) if e != third else z for e in order])[0]
                    for z in (said.get(pair[0]), said.get(pair[1]), "\x00new", None)}
        return len(outcomes) == 1

    groups: dict[tuple[str, ...], list] = {}
    for a in answers:
        groups.setdefault(a.selection.experts, []).append({o.expert: o.answer for o in a.outputs})
    total = 0
    for order, said in groups.items():
        total += 3 * len(said) - max(sum(decided(s, order, pair) for s in said)
                                     for pair in itertools.combinations(order, 2))
    return total / len(answers)


def print_cost_table(name: str, rows: list[dict]) -> None:
    print(f"\n{name:<11} {'system':<54} {'accuracy':>9} {'95% interval':>14} {'calls/q':>8} "
          f"{'mean k':>7}")
    for r in rows:
        interval = f"[{100 * r['low']:.1f}, {100 * r['high']:.1f}]"
        print(f"{name:<11} {r['system']:<54} {100 * r['accuracy']:8.2f}% {interval:>14} "
              f"{r['calls']:8.2f} {r['mean_k']:7.2f}")


def cost_verdicts(name: str, rows: list[dict]) -> None:
    evidence = next(r for r in rows if r["system"] == "k by evidence (cap 5)")
    best_k, diff = evidence["best_k"], evidence["diff"]
    lossless3 = next(r for r in rows if r["system"].startswith("lossless escalation, k=3"))
    at_best = next(r for r in rows if r["system"].startswith(f"lossless escalation, k={best_k}"))
    target = CALL_TARGETS[name]
    print(f"  lossless at k=3: no calling order of these ensembles gets below "
          f"{lossless3['floor']:.2f} calls/question (in hindsight, on these questions: after the "
          "best pair of each ensemble, the third expert can still change the vote on "
          f"{100 * (lossless3['floor'] - 2):.1f}% of them)")
    print(f"target {name}: lossless at k=3 {lossless3['calls']:.2f} calls/question, at the best "
          f"fixed k={best_k} {at_best['calls']:.2f} (<= {target}) -> "
          f"{'met' if lossless3['calls'] <= target else 'NOT met'} at k=3, "
          f"{'met' if at_best['calls'] <= target else 'NOT met'} at k={best_k}; equal to the "
          "fixed-k vote on every question (asserted)")
    print(f"  k by evidence: prior weight of the pool-wide choice {evidence['prior_weight']} "
          "(chosen by 5-fold cross-validation on the validation questions)")
    print(f"target {name}: k by evidence minus best fixed k={best_k}: "
          f"{100 * diff.estimate:+.2f} points, 95% interval [{100 * diff.low:+.2f}, "
          f"{100 * diff.high:+.2f}] ({diff.method}) -> "
          f"{'met' if diff.estimate >= 0 else 'NOT met'}")
    best_marks = next(r for r in rows if r["system"] == f"fixed k={best_k}")["marks"]
    for row in rows:
        if "--call-cost" in row["system"]:
            d = paired_bootstrap(row["marks"], best_marks)
            print(f"  {row['system'].strip()} (k by evidence, lossless): {row['calls']:.2f} "
                  f"calls/question, {100 * d.estimate:+.2f} points [{100 * d.low:+.2f}, "
                  f"{100 * d.high:+.2f}] against fixed k={best_k}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Only the default router rows.")
    parser.add_argument("--skip-cli", action="store_true", help="Skip the full CLI run timing.")
    parser.add_argument("--cost-only", action="store_true",
                        help="Only the cost table (k, escalation, k by evidence).")
    parser.add_argument("--pools", default="small,all",
                        help="Cost table: which pools, comma-separated (small, all).")
    parser.add_argument("--shrinkage", type=float, default=None,
                        help="Cost table: the ensemble router's shrinkage (default: the preset's).")
    args = parser.parse_args()
    if not TEST_DATA.is_file():
        raise SystemExit(f"needs the replay data in {REPLAY}")
    os.chdir(ROOT)  # the pools' recordings are relative to the project root
    from orchestrator.config import PROFILE_ROUTER as default_router
    queries = read_benchmark(TEST_DATA)
    rows = []
    print("profiles (cached in runs/replay-profiles/):", flush=True)
    if args.cost_only:  # before the other profiles: only the pools asked for
        chosen = [n for n in POOLS if n.split()[0] in args.pools.split(",")]
        for name in chosen:
            rows = cost_rows(POOLS[name], profile_for(POOLS[name]), queries, args.shrinkage)
            print_cost_table(name, rows)
            cost_verdicts(name, rows)
        return
    profiles = {name: profile_for(pool) for name, pool in POOLS.items()}
    paper_profile = profile_for(POOLS["small (13)"], split="train")
    routers = [default_router] if args.quick else [
        "ensemble", "knn", "topk", "symbolic-moe", "random"]
    for name, pool in POOLS.items():
        ref = references(pool, queries)
        rows.append((name, "best single expert", ref["best_single"], 1, 1, None, None))
        rows.append((name, "majority of all", ref["majority_all"], len(Profile.load(
            profiles[name]).experts), None, None, None))
        rows.append((name, "oracle", ref["oracle"], None, None, None, None))
        for router in routers:
            m = measure(pool, profiles[name], queries, router)
            rows.append((name, router, m["accuracy"], m["mean_k"], m["distinct"], m["wall_s"],
                         m["route_qps"]))
        if not args.quick:
            for label, routing in (("ensemble + adaptive k", {"adaptive_k": True}),
                                   ("ensemble + adaptive k, conf .65",
                                    {"adaptive_k": True, "confidence": 0.65}),
                                   ("ensemble, max 4 experts", {"max_experts": 4}),
                                   ("knn + adaptive k", {"adaptive_k": True}),
                                   ("knn, max 4 experts", {"max_experts": 4}),
                                   ("symbolic-moe, replace rare", {"replace_rare": True})):
                router = label.split(",")[0].split(" +")[0]
                m = measure(pool, profiles[name], queries, router, **routing)
                rows.append((name, label, m["accuracy"], m["mean_k"], m["distinct"], m["wall_s"],
                             m["route_qps"]))
    m = measure(POOLS["small (13)"], paper_profile, queries, "symbolic-moe")
    rows.append(("small (13)", "symbolic-moe, paper split (348)", m["accuracy"], m["mean_k"],
                 m["distinct"], m["wall_s"], m["route_qps"]))

    print(f"\n{'pool':<11} {'router':<34} {'accuracy':>9} {'mean k':>7} {'experts':>8} "
          f"{'wall s':>7} {'route q/s':>10}")
    for pool, router, acc, mean_k, distinct, wall, qps in rows:
        cells = [f"{100 * acc:8.2f}%", "-" if mean_k is None else f"{mean_k:.2f}",
                 "-" if distinct is None else str(distinct),
                 "-" if wall is None else f"{wall:.2f}", "-" if qps is None else f"{qps:,.0f}"]
        print(f"{pool:<11} {router:<34} {cells[0]:>9} {cells[1]:>7} {cells[2]:>8} "
              f"{cells[3]:>7} {cells[4]:>10}")
    for name, target in TARGETS.items():
        got = next(r[2] for r in rows if r[0] == name and r[1] == default_router)
        print(f"target {name}: {default_router} {100 * got:.2f}% vs >= {100 * target:.1f}% "
              f"-> {'met' if got >= target else 'NOT met'}")
    if not args.quick:
        for name, pool in POOLS.items():
            cost = cost_rows(pool, profiles[name], queries, args.shrinkage)
            print_cost_table(name, cost)
            cost_verdicts(name, cost)
    if not args.skip_cli:
        run = cli_run(POOLS["small (13)"], profiles["small (13)"])
        print(f"full `orchestrate run` (13 pool, {run['router']}, cold embedding cache): "
              f"{run['wall_s']:.1f}s wall (target <= 45 s), annotate {run['annotate_s']:.1f}s, "
              f"routing {run['route_qps']:,} questions/s (target >= 20,000), "
              f"accuracy {100 * run['accuracy']:.2f}%")


if __name__ == "__main__":
    main()
