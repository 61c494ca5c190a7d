"""The data a run's report.html embeds: summary rows, accuracy with 95% intervals overall and
per domain, expert usage per skill, the sweep's rows, and every results.jsonl record (with its
options, looked up in the run's benchmark file when the records lack them)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ..benchmarks.intervals import Interval, wilson
from .rundir import RunDir
from .stats import OVERALL, domain_accuracy, expert_usage

log = logging.getLogger(__name__)

REFERENCES = (("best single expert", "best_single"), ("random single expert (expected)",
              "random_single"), ("majority vote of all experts", "majority_all"),
              ("oracle (any expert right)", "oracle"))


def run_payload(run: RunDir) -> dict[str, Any]:
    s = run.summary
    return {
        "kind": "run",
        "title": f"{run.path.name}: pool {s['pool']}, router {s['router']}, "
                 f"aggregator {s['aggregator']}",
        "router": s["router"],
        "accuracy": overall_accuracy(run),
        "summary": summary_rows(run),
        "references": references(run),
        "domains": domain_rows(run),
        "usage": usage_table(run),
        "sweep": sweep_rows(run),
        "experts": all_experts(run),
        "records": records_for_page(run),
    }


def interval_dict(iv: Interval, correct: int | None = None, n: int | None = None) -> dict:
    return {"estimate": _finite(iv.estimate), "low": iv.low, "high": iv.high,
            "method": iv.method, "correct": correct, "n": n}


def overall_accuracy(run: RunDir) -> dict | None:
    """The routed accuracy with its 95% interval: summary.json's own when it gives one
    (accuracy_interval or accuracy_ci: [low, high] or {low, high}), else Wilson's."""
    s = run.summary
    marks = [bool(r["correct"]) for r in run.records if r.get("correct") is not None]
    if not marks:
        return None
    correct, n = sum(marks), len(marks)
    given = _given_interval(s.get("accuracy_interval") or s.get("accuracy_ci"))
    if given:
        return {"estimate": correct / n, "low": given[0], "high": given[1],
                "method": "from summary.json", "correct": correct, "n": n}
    return interval_dict(wilson(correct, n), correct, n)


def _given_interval(value: Any) -> tuple[float, float] | None:
    if isinstance(value, dict):
        value = [value.get("low"), value.get("high")]
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) for v in value)):
        return float(value[0]), float(value[1])
    return None


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def summary_rows(run: RunDir) -> list[list[str]]:
    """[label, value] pairs in display order; values already formatted."""
    s = run.summary
    experts = s.get("experts") or {}
    total = {key: sum(row.get(key) or 0 for row in experts.values())
             for key in ("calls", "tokens_in", "tokens_out")}
    rows = [["questions", f"{s['n']} ({s.get('n_scored', '-')} with a gold answer)"],
            ["k (experts per question)", f"{s['k']} (mean {s['mean_k']:.2f})"],
            ["expert calls", f"{total['calls']:,}"],
            ["tokens in / out", f"{total['tokens_in']:,} / {total['tokens_out']:,}"],
            ["experts used", f"{s.get('distinct_experts', '-')} of "
                             f"{len(s.get('pool_experts') or experts)}"],
            ["failed generations", str(s.get("errors", "-"))],
            ["model loads", str(s.get("loads_total", "-"))]]
    rows += cost_rows(s)
    if s.get("aggregated_by"):
        rows.append(["decided by", ", ".join(f"{k}: {v}" for k, v in s["aggregated_by"].items())])
    rows += stage_rows(s)
    if s.get("benchmark"):
        rows.append(["benchmark", str(s["benchmark"]) + (" (dry run)" if s.get("dry_run") else "")])
    rows += [["executor", str(s.get("executor", "-"))], ["pool", str(s["pool"])]]
    return rows


def cost_rows(s: dict) -> list[list[str]]:
    """Calls, escalation, k chosen, tokens and money per question (what the answers cost)."""
    rows = []
    esc = s.get("escalation")
    if isinstance(esc, dict):
        rows.append(["calls per question", f"{esc['calls_per_question']:.2f} of "
                     f"{esc['chosen_per_question']:.2f} chosen ({esc['mode']} escalation, "
                     f"{esc['escalated']} questions escalated)"])
    chosen = s.get("k_chosen")
    if isinstance(chosen, dict) and len(chosen.get("distribution") or {}) > 1:
        rows.append(["k chosen", ", ".join(f"{k}: {n}" for k, n in chosen["distribution"].items())])
    cost = s.get("cost")
    if isinstance(cost, dict):
        rows.append(["tokens per question", f"{cost['tokens_in_per_question']:,} in / "
                     f"{cost['tokens_out_per_question']:,} out"])
        if cost.get("money") is not None:
            rows.append(["cost", f"{cost['money']:,.4f} ({cost['money_per_question']:.6f} per "
                         "question)"])
    elif isinstance(cost, (int, float)):
        rows.append(["cost", f"{cost:,.4f}"])
    store = s.get("store")
    if isinstance(store, dict) and store.get("path"):
        rows.append(["from the store", f"{store['from_store']:,} reused, {store['generated']:,} "
                     "generated"])
    return rows


def stage_rows(s: dict) -> list[list[str]]:
    """Seconds per stage and the orchestrator's own time (the wall time minus the stages)."""
    stages = s.get("stages")
    if not isinstance(stages, dict):  # an older summary: its *_s fields
        stages = {k: v for k, v in s.items() if k.endswith("_s") and isinstance(v, (int, float))}
    rows = [[f"{key[:-2].replace('_', ' ')} seconds", f"{value:.3f}"]
            for key, value in stages.items() if isinstance(value, (int, float))]
    if isinstance(s.get("wall_s"), (int, float)) and "wall_s" not in stages:
        rows.append(["wall seconds", f"{s['wall_s']:.3f}"])
    if isinstance(s.get("overhead_s"), (int, float)) and "overhead_s" not in stages:
        rows.append(["orchestrator's own seconds", f"{s['overhead_s']:.3f}"])
    return rows


def references(run: RunDir) -> list[dict]:
    """The evaluation's reference systems on the same questions, when every expert answered."""
    ev = run.evaluation
    if not ev:
        return []
    rows = []
    for label, key in REFERENCES:
        value = ev.get(key)
        if isinstance(value, dict):  # best_single: {expert, accuracy}
            label, value = f"{label} ({value['expert']})", value["accuracy"]
        if isinstance(value, (int, float)):
            rows.append({"label": label, "accuracy": value, "n": ev["n"]})
    return rows


def domain_rows(run: RunDir) -> list[dict]:
    """"all" then each domain: n, routed accuracy with Wilson's interval, best single and
    oracle when the run has an evaluation."""
    rows = []
    for domain, row in domain_accuracy(run).items():
        n = int(row["n"])
        correct = round(row["routed"] * n)
        rows.append({"domain": domain, "all": domain == OVERALL,
                     **interval_dict(wilson(correct, n), correct, n),
                     "best_single": row.get("best_single"), "oracle": row.get("oracle")})
    return rows


def usage_table(run: RunDir, top: int = 30) -> dict | None:
    usage = expert_usage(run, top)
    if usage is None:
        return None
    return {"kind": usage.kind, "rows": usage.rows, "row_n": usage.row_n,
            "total_rows": usage.total_rows, "experts": usage.experts,
            "counts": usage.counts.tolist()}


def sweep_rows(run: RunDir) -> dict | None:
    rows = (run.sweep or {}).get("rows") or []
    keep = ("k", "accuracy", "calls", "generated", "mean_k", "distinct_experts")
    if not rows:
        return None
    return {"current_k": run.summary["k"],
            "rows": [{key: r.get(key) for key in keep} for r in sorted(rows, key=lambda r: r["k"])]}


def all_experts(run: RunDir) -> list[str]:
    experts = list(run.summary.get("pool_experts") or run.experts)
    for r in run.records:
        experts += [e for e in r.get("experts", []) if e not in experts]
    return experts


def records_for_page(run: RunDir) -> list[dict]:
    """results.jsonl records as they are, plus "options" from the benchmark file when the
    records lack them (results.jsonl does not repeat them) and, per output, "right": whether
    its extracted answer matches the gold answer (None without a gold answer)."""
    from ..benchmarks.extract import is_correct
    from ..benchmarks.readers import infer_answer_type

    records = [dict(r) for r in run.records]
    options = {} if any(r.get("options") for r in records) else _benchmark_options(run)
    for r in records:
        if r.get("id") in options:
            r["options"] = options[r["id"]]
        gold = None if r.get("gold") is None else str(r["gold"])
        kind = infer_answer_type(str(r.get("question", "")), gold, tuple(r.get("options") or ()))
        r["outputs"] = [dict(o, right=is_correct(o.get("answer"), gold, kind))
                        for o in r.get("outputs") or []]
    return records


def _benchmark_options(run: RunDir) -> dict[str, list[str]]:
    """{question id: options} from summary.json's benchmark path (relative to where the run
    was started); {} when it is gone or unreadable."""
    from ..benchmarks.readers import read_benchmark
    from ..errors import OrchestratorError

    bench = run.summary.get("benchmark")
    if not bench or run.summary.get("dry_run"):
        return {}
    path = Path(bench)
    if not path.is_file():
        return {}
    try:
        return {q.id: list(q.options) for q in read_benchmark(path) if q.options}
    except (OrchestratorError, OSError, ValueError) as exc:
        log.debug("no options from %s: %s", path, exc)
        return {}
