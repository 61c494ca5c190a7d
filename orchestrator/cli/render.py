"""Tables printed at the end of a run."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.table import Table


def expert_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"pool {summary['pool']}: per expert", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("expert", "calls", "loads", "tok in", "tok out", "load s", "gen s", "errors",
                "acc"):
        table.add_column(col, justify="left" if col == "expert" else "right", no_wrap=True)
    for name, row in summary["experts"].items():
        acc = row.get("accuracy")
        table.add_row(
            name, str(row["calls"]), str(row["loads"]), str(row["tokens_in"]),
            str(row["tokens_out"]), f"{row['load_s']:.2f}", f"{row['generate_s']:.2f}",
            str(row["errors"]), "-" if acc is None else f"{100 * acc:.1f}%",
        )
    return table


def k_text(summary: dict[str, Any]) -> str:
    """k=3, k=3 (mean 2.40) or, chosen by evidence, k<=5 by evidence (mean 4.00: 3 x1, ...)."""
    chosen = summary.get("k_chosen") or {}
    if chosen.get("chosen_by") == "evidence":
        spread = ", ".join(f"{k}: {n}" for k, n in (chosen.get("distribution") or {}).items())
        return f"k<={summary['k']} by evidence (mean {summary['mean_k']:.2f}; {spread})"
    return f"k={summary['k']}" + (f" (mean {summary['mean_k']:.2f})"
                                  if summary["mean_k"] != summary["k"] else "")


def summary_lines(summary: dict[str, Any], out_dir: str) -> list[str]:
    acc = summary["accuracy"]
    acc_text = "n/a (no gold answers)" if acc is None else (
        f"{100 * acc:.2f}% ({summary['correct']}/{summary['n_scored']})"
        + (f", 95% interval [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"
           if (ci := summary.get("accuracy_ci")) else "")
    )
    return [
        f"accuracy   {acc_text}   [router {summary['router']}, " + k_text(summary)
        + f", {summary['distinct_experts']} experts used, "
        f"aggregator {summary['aggregator']}, executor {summary['executor']}]",
        *([f"aggregate  {', '.join(f'{m} {n}' for m, n in summary['aggregated_by'].items())}"]
          if summary.get("aggregated_by") and set(summary["aggregated_by"]) != {
              summary["aggregator"]} else []),
        *([f"calls      {esc['calls_per_question']:.2f} per question of "
           f"{esc['chosen_per_question']:.2f} chosen ({esc['mode']} escalation: "
           f"{esc['escalated']} questions asked more experts)"]
          if (esc := summary.get("escalation")) else []),
        *([f"store      {st['from_store']} from the store, {st['generated']} generated "
           f"({st['path']})"] if (st := summary.get("store")) and st.get("path") else []),
        *stage_lines(summary),
        *cost_lines(summary),
        f"results    {out_dir}/results.jsonl, {out_dir}/summary.json",
    ] + evaluation_lines(summary.get("evaluation")) + method_lines(summary.get("method"))


def method_lines(method: dict[str, Any] | None) -> list[str]:
    """The combination method that ran, why, and a WARN line per warning."""
    if not method:
        return []
    return [f"method     {method['method']}: {method['reason']}",
            *(f"WARN       {w}" for w in method.get("warnings") or [])]


def stage_lines(summary: dict[str, Any]) -> list[str]:
    """Loads, errors, wall time, then seconds per stage and the orchestrator's own time."""
    head = (f"loads      {summary['loads_total']}   errors {summary['errors']}   "
            f"wall {summary['wall_s']:.1f}s   ")
    stages = summary.get("stages")
    if not stages:  # a summary written before stages were recorded
        return [head + f"orchestration overhead {100 * summary['overhead_share']:.1f}%"]
    names = {"annotate_s": "annotate", "route_s": "route", "load_s": "load",
             "generate_s": "generate", "aggregate_s": "aggregate"}
    parts = [f"{names.get(k, k)} {v:.2f}s" for k, v in stages.items()]
    qps = f" ({summary['route_qps']:,} questions/s routed)" if summary.get("route_qps") else ""
    return [head + f"orchestrator's own time {summary['overhead_s']:.2f}s "
            f"({100 * summary['overhead_share']:.1f}%)",
            f"stages     {'   '.join(parts)}{qps}"]


def cost_lines(summary: dict[str, Any]) -> list[str]:
    """Calls and tokens per question, and money when the manifest prices every expert."""
    cost = summary.get("cost")
    if not cost:
        return []
    line = (f"cost       {cost['calls_per_question']:.2f} calls, "
            f"{cost['tokens_in_per_question']:,.0f} tokens in, "
            f"{cost['tokens_out_per_question']:,.0f} out per question")
    if cost.get("money") is not None:
        line += (f"   money {cost['money']:.6g} in all, {cost['money_per_question']:.6g} per "
                 "question (manifest prices)")
    elif cost.get("unpriced"):
        line += f"   money unknown (no price for {', '.join(cost['unpriced'])})"
    return [line]


def evaluation_lines(ev: dict[str, Any] | None) -> list[str]:
    if not ev:
        return []
    best = ev["best_single"]
    diff = ev.get("routed_vs_best_single")
    return [
        f"reference  routed {100 * ev['routed']:.2f}% | best single {100 * best['accuracy']:.2f}% "
        f"({best['expert']}) | random single {100 * ev['random_single']:.2f}% | majority of all "
        f"{100 * ev['majority_all']:.2f}% | oracle {100 * ev['oracle']:.2f}%  (n={ev['n']})",
    ] + ([f"paired     routed - best single {100 * diff['difference']:+.2f} points, 95% interval "
          f"[{100 * diff['ci'][0]:+.2f}, {100 * diff['ci'][1]:+.2f}]"] if diff else [])
