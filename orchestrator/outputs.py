"""Run outputs: results.jsonl (one line per question) and summary.json, written atomically
(a temporary file in the same folder, then a rename), so a crash never leaves a partial file
that looks complete.

Any text is writable: a lone surrogate (`\\ud800` is valid JSON, so it reaches questions and
answers) cannot be encoded as UTF-8, so text files are written with errors="backslashreplace",
which turns it into the six characters `\\ud800`: inside a JSON string that is the same JSON
escape it was read from, so results.jsonl round-trips exactly. `WRITTEN` lists every file this
process completed, for the interrupt message of the CLI."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .accounting import cost_record, pool_prices, run_stages
from .benchmarks.intervals import wilson_bounds
from .core import RunResult
from .types import Answer

WRITTEN: list[Path] = []  # files completed by this process, in order


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    WRITTEN.append(path)


def atomic_save_figure(fig, path: Path, **savefig) -> None:
    """A matplotlib figure as PNG: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", **savefig)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    WRITTEN.append(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def answer_record(answer: Answer) -> dict[str, Any]:
    q = answer.query
    return {
        "id": q.id,
        "question": q.question,
        "gold": q.gold,
        "domain": q.domain,
        "skills": list(answer.selection.skills),
        "experts": list(answer.selection.experts),
        "scores": list(answer.selection.scores),
        "outputs": [
            {"expert": o.expert, "text": o.text, "answer": o.answer, "error": o.error,
             "tokens_in": o.tokens_in, "tokens_out": o.tokens_out}
            for o in answer.outputs
        ],
        "final_answer": answer.final_answer,
        "correct": answer.correct,
        "aggregator": answer.aggregator,
        "rounds": answer.rounds,
        "aggregation": {k: v for k, v in answer.detail.items()
                        if k in ("by", "text", "fallback", "votes", "weights")},
    }


def expert_table(result: RunResult) -> dict[str, dict[str, Any]]:
    """Per-expert counters plus each expert's own accuracy on the questions it answered."""
    own: dict[str, list[bool]] = {}
    for a in result.answers:
        if a.query.gold is None:
            continue
        for o in a.outputs:
            own.setdefault(o.expert, []).append(
                o.answer is not None and _same(o.answer, a)
            )
    table = {}
    for expert_id, s in result.stats.experts.items():
        row = s.to_dict()
        marks = own.get(expert_id)
        row["accuracy"] = round(sum(marks) / len(marks), 4) if marks else None
        table[expert_id] = row
    return table


def _same(answer: str, a: Answer) -> bool:
    from .benchmarks.extract import is_correct

    return bool(is_correct(answer, a.query.gold, a.query.answer_type))


def _methods(result: RunResult) -> dict[str, int]:
    """How many answers each method decided (e.g. fuse, early-exit, vote as a fallback)."""
    counts: dict[str, int] = {}
    for a in result.answers:
        counts[a.aggregator] = counts.get(a.aggregator, 0) + 1
    return counts


def escalation_record(result: RunResult) -> dict[str, Any]:
    """Expert calls per question against the k chosen, and how many questions took how many
    rounds (escalation asks more experts only where the answer was not decided)."""
    n = max(1, len(result.answers))
    rounds: dict[str, int] = {}
    for a in result.answers:
        rounds[str(a.rounds)] = rounds.get(str(a.rounds), 0) + 1
    return {
        "mode": result.config.escalation.mode,
        "calls_per_question": round(sum(len(a.outputs) for a in result.answers) / n, 3),
        "chosen_per_question": round(result.mean_k, 3),
        "escalated": sum(a.rounds > 1 for a in result.answers),
        "rounds": dict(sorted(rounds.items(), key=lambda kv: int(kv[0]))),
    }


def k_record(result: RunResult) -> dict[str, Any]:
    """How many experts the router chose per question (with k by evidence, k is a cap): how
    (evidence or fixed), the mean, the distribution, and the mean per skill."""
    sizes: dict[str, int] = {}
    per_skill: dict[str, list[int]] = {}
    for a in result.answers:
        n = len(a.selection.experts)
        sizes[str(n)] = sizes.get(str(n), 0) + 1
        for skill in a.selection.skills:
            per_skill.setdefault(skill, []).append(n)
    by_evidence = any(a.selection.evidence.get("k_chosen_by") == "evidence"
                      for a in result.answers)
    return {
        "cap": result.k,
        "chosen_by": "evidence" if by_evidence else "fixed",
        "mean": round(result.mean_k, 3),
        "distribution": dict(sorted(sizes.items(), key=lambda kv: int(kv[0]))),
        "per_skill": {s: round(sum(v) / len(v), 2) for s, v in sorted(per_skill.items())},
    }


def method_record(result: RunResult, evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    """Which combination method ran and why (`orchestrator.methods`), with a warning when the
    run's routed accuracy is below the best single expert's on the same questions."""
    if result.method is None:
        return None
    record = {**result.method, "warnings": list(result.method.get("warnings") or [])}
    best = (evaluation or {}).get("best_single")
    if best and evaluation.get("routed") is not None and evaluation["routed"] < best["accuracy"]:
        diff = evaluation.get("routed_vs_best_single") or {}
        ci = diff.get("ci")
        record["warnings"].append(
            f"this run's accuracy {100 * evaluation['routed']:.1f}% is below the single best "
            f"expert {best['expert']} ({100 * best['accuracy']:.1f}%) on the same "
            f"{evaluation['n']} questions"
            + (f" (difference {100 * diff['difference']:+.1f} points, 95% interval "
               f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"
               + (", within chance" if ci[0] <= 0 <= ci[1] else "") + ")" if ci else "")
            + _why(record, best["expert"]))
    return record


def _why(method: dict[str, Any], best_here: str) -> str:
    """Why the method ran anyway: what validation said (when it had a table)."""
    val = method.get("validation") or {}
    single, chosen = val.get("best_single"), next(
        (r for r in val.get("table") or [] if r["method"] == method.get("method")), None)
    if not single or not chosen:
        return ""
    expert = single["method"].partition(":")[2]
    return (f"; on the {val['n']} validation questions {method['method']} scored "
            f"{100 * chosen['accuracy']:.1f}% and the best single expert was {expert} "
            f"({100 * single['accuracy']:.1f}%)"
            + (f", not {best_here}" if expert != best_here else ""))


def summary_record(result: RunResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    acc = result.accuracy
    errors = sum(1 for a in result.answers for o in a.outputs if o.error)
    stages, overhead = run_stages(result)
    return {
        "n": len(result.answers),
        "n_scored": len(result.scored),
        "correct": sum(bool(a.correct) for a in result.answers),
        "accuracy": None if acc is None else round(acc, 4),
        "accuracy_ci": wilson_bounds(sum(bool(a.correct) for a in result.scored), len(result.scored)),
        "k": result.k,
        "mean_k": round(result.mean_k, 3),
        "distinct_experts": result.distinct_experts,
        "router": result.config.router,
        "aggregator": result.config.aggregator,
        "method": method_record(result, (extra or {}).get("evaluation")),
        "aggregated_by": _methods(result),
        "early_exits": sum(a.aggregator == "early-exit" for a in result.answers),
        "escalation": escalation_record(result),
        "cost": cost_record(result.answers, pool_prices(result.pool)),
        "k_chosen": k_record(result),
        "executor": result.config.executor,
        "pool": result.pool.name,
        "pool_experts": result.pool.expert_ids,
        "loads_total": result.stats.loads_total,
        "errors": errors,
        "wall_s": round(result.wall_s, 3),
        "backend_s": round(result.stats.backend_s, 3),
        "stages": stages,  # see accounting.py: annotate, route, load, generate, aggregate
        "overhead_s": round(overhead, 4),  # wall time outside every stage
        "overhead_share": round(overhead / result.wall_s, 4) if result.wall_s else 0.0,
        **{name: round(seconds, 4) for name, seconds in result.stage_s.items()},
        "route_qps": (round(len(result.answers) / result.stage_s["route_s"])
                      if result.stage_s.get("route_s") else None),
        **(extra or {}),
        "config": result.config.model_dump(mode="json"),
        "experts": expert_table(result),
    }


def check_answered(result: RunResult, label: str = "") -> None:
    """Refuse to write a run in which every generation failed (nothing in it is an answer)."""
    outputs = [o for a in result.answers for o in a.outputs]
    if outputs and all(o.error for o in outputs):
        from .errors import BackendError

        raise BackendError(
            f"{label}all {len(outputs)} generations failed, so no results were written; the "
            f"first error: {outputs[0].error}"
        )


def write_run(out_dir: str | Path, result: RunResult, extra: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """Write results.jsonl then summary.json; returns the summary. A report.md already in the
    folder described the earlier results, so it goes first (the report is drawn again after)."""
    out = Path(out_dir)
    (out / "report.md").unlink(missing_ok=True)
    lines = "".join(json.dumps(answer_record(a), ensure_ascii=False) + "\n" for a in result.answers)
    atomic_write_text(out / "results.jsonl", lines)
    summary = summary_record(result, extra)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
