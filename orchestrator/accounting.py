"""Where a run's time and money went: its stages (summary.json `stages`) and its cost
(summary.json `cost`: calls, tokens and, when the pool manifest prices its experts, money).

Stages, in seconds of the run's wall time:

  annotate   skills (and embeddings) of the questions
  route      the router's choice of experts
  load       model loads and releases inside the backends, taken out of the generate and
             aggregate stages they happened in (capped by them: with several placements loads
             overlap)
  generate   the experts' generations, all escalation rounds
  aggregate  combining the answers, the aggregator's own generations included

`overhead_s` is the wall time outside every named stage: the orchestrator's own time (reading
the questions, building requests, collecting outputs, scoring).
"""

from __future__ import annotations

from typing import Any

STAGES = ("annotate_s", "route_s", "load_s", "generate_s", "aggregate_s")


def stage_record(stage_s: dict[str, float], backend_load_s: float) -> dict[str, float]:
    """The pipeline's stage walls (annotate_s, route_s, generate_s, aggregate_s, including the
    loads) and the backends' load + release seconds -> the five stages, loads split out."""
    generate, aggregate = stage_s.get("generate_s", 0.0), stage_s.get("aggregate_s", 0.0)
    from_generate = min(backend_load_s, generate)
    from_aggregate = min(backend_load_s - from_generate, aggregate)
    return {
        "annotate_s": stage_s.get("annotate_s", 0.0),
        "route_s": stage_s.get("route_s", 0.0),
        "load_s": from_generate + from_aggregate,
        "generate_s": generate - from_generate,
        "aggregate_s": aggregate - from_aggregate,
    }


def run_stages(result) -> tuple[dict[str, float], float]:
    """(stages rounded, overhead seconds = wall - every stage) of a RunResult."""
    loads = sum(s.load_s + s.release_s for s in result.stats.experts.values())
    stages = stage_record(result.stage_s, loads)
    overhead = max(0.0, result.wall_s - sum(stages.values()))
    return {k: round(v, 4) for k, v in stages.items()}, overhead


def expert_usage(answers) -> dict[str, list[int]]:
    """expert id -> [calls, tokens in, tokens out] over the answers: the experts' outputs plus
    the aggregator's own generations (attributed to the expert named in `detail["by"]`).
    Answers reused from a store or cache count: this is what the answers cost to make."""
    usage: dict[str, list[int]] = {}
    for a in answers:
        seen = [0, 0, 0]
        for o in a.outputs:
            row = usage.setdefault(o.expert, [0, 0, 0])
            for i, value in enumerate((1, o.tokens_in, o.tokens_out)):
                row[i] += value
                seen[i] += value
        extra = [a.usage.calls - seen[0], a.usage.tokens_in - seen[1],
                 a.usage.tokens_out - seen[2]]
        if extra[0] > 0:
            row = usage.setdefault(str(a.detail.get("by") or "aggregator"), [0, 0, 0])
            for i, value in enumerate(extra):
                row[i] += value
    return usage


def cost_record(answers, prices: dict[str, Any]) -> dict[str, Any]:
    """Calls and tokens per question; money (total and per question) when every expert that
    was called has a price in the manifest (`prices`: expert id -> Price), else None and the
    unpriced experts are named."""
    n = max(1, len(answers))
    usage = expert_usage(answers)
    calls = sum(u[0] for u in usage.values())
    tokens_in = sum(u[1] for u in usage.values())
    tokens_out = sum(u[2] for u in usage.values())
    per_expert: dict[str, dict[str, Any]] = {}
    for expert, (c, tin, tout) in sorted(usage.items()):
        price = prices.get(expert)
        money = (None if price is None else
                 (tin * price.input_per_mtok + tout * price.output_per_mtok) / 1e6)
        per_expert[expert] = {"calls": c, "tokens_in": tin, "tokens_out": tout,
                              "money": None if money is None else round(money, 6)}
    unpriced = sorted(e for e, row in per_expert.items() if row["money"] is None)
    total = None if unpriced or not per_expert else sum(r["money"] for r in per_expert.values())
    return {
        "calls": calls,
        "calls_per_question": round(calls / n, 3),
        "aggregator_calls": sum(max(0, a.usage.calls - len(a.outputs)) for a in answers),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "tokens_in_per_question": round(tokens_in / n, 1),
        "tokens_out_per_question": round(tokens_out / n, 1),
        "money": None if total is None else round(total, 6),
        "money_per_question": None if total is None else round(total / n, 8),
        "unpriced": unpriced if prices else [],
        "priced": bool(prices),
        "per_expert": per_expert,
    }


def pool_prices(pool) -> dict[str, Any]:
    """expert id -> Price for the experts of a pool manifest that have one."""
    return {e.id: e.price for e in pool.experts if getattr(e, "price", None) is not None}
