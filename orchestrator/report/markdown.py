"""report.md: the run's summary and per-expert tables, then the plots by relative path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .rundir import RunDir
from .stats import domain_accuracy


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: int = 1) -> list[str]:
    """A GitHub table; columns from index `right` on are right-aligned."""
    align = [":---" if i < right else "---:" for i in range(len(header))]
    return [f"| {' | '.join(header)} |", f"|{'|'.join(align)}|",
            *(f"| {' | '.join(cell(v) for v in row)} |" for row in rows), ""]


def render(run: RunDir, images: Sequence[tuple[str, str]]) -> str:
    """images: (alt text, path relative to the run folder) in display order."""
    s = run.summary
    lines = [f"# Run report: pool `{s['pool']}`, router `{s['router']}`, "
             f"aggregator `{s['aggregator']}`", ""]
    if s.get("benchmark"):
        lines += [f"Benchmark `{s['benchmark']}`" + (" (dry run: fake answers)" if s.get("dry_run")
                                                     else "") + ".", ""]
    lines += ["## Summary", "", *table(["", "value"], summary_rows(s), right=2)]
    ev = run.evaluation
    if ev:
        best = ev["best_single"]
        lines += [f"Reference points on the same {ev['n']} scored questions (every expert of the "
                  "pool answered every question):", "", *table(["system", "accuracy"], [
                      ("routed (this run)", with_ci(ev["routed"], ev.get("routed_ci"))),
                      (f"best single expert ({best['expert']})", pct(best["accuracy"])),
                      ("random single expert (expected)", pct(ev["random_single"])),
                      ("majority vote of all experts", pct(ev["majority_all"])),
                      ("oracle (any expert right)", pct(ev["oracle"])),
                  ])]
        diff = ev.get("routed_vs_best_single")
        if diff:
            lo, hi = diff["ci"]
            verdict = ("better than" if lo > 0 else "worse than" if hi < 0
                       else "not distinguishable from")
            lines += [f"Routed minus best single expert: {100 * diff['difference']:+.2f} points, "
                      f"95% interval [{100 * lo:+.2f}, {100 * hi:+.2f}] ({diff['method']}): "
                      f"the routed system is {verdict} its best member on these questions.", ""]
    lines += method_section(s.get("method"))
    lines += ["## Per expert", "", *expert_rows(run)]
    per_domain = domain_accuracy(run)
    if len(per_domain) > 2:  # "all" plus one domain says nothing new
        keys = [k for k in ("routed", "best_single", "oracle") if k in per_domain["all"]]
        names = {"routed": "routed", "best_single": "best single", "oracle": "oracle"}
        lines += ["## Accuracy per domain", "", *table(
            ["domain", "scored", *(names[k] for k in keys)],
            [(d, row["n"], *(with_ci(row[k], row["routed_ci"]) if k == "routed" else pct(row[k])
                             for k in keys)) for d, row in per_domain.items()])]
    if run.sweep and run.sweep.get("rows"):
        lines += ["## Sweep over k", "", *sweep_table(run.sweep["rows"])]
    if images:
        lines += ["## Plots", ""]
        for alt, rel in images:
            lines += [f"![{alt}]({rel})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def method_section(method: dict[str, Any] | None) -> list[str]:
    """Which combination method ran and why, the validation table it was chosen from, and
    the warnings (below the single best expert) in bold."""
    if not method:
        return []
    lines = ["## Combination method", "", f"`{method['method']}`: {method['reason']}.", ""]
    lines += [f"**Warning:** {w}." for w in method.get("warnings") or []]
    if method.get("warnings"):
        lines.append("")
    val = method.get("validation")
    if val and val.get("table"):
        settings = val.get("settings") or {}
        lines += [f"Measured by `orchestrate profile` on {val['n']} validation questions"
                  + (f", routed by `{settings.get('router')}` with k={settings.get('k')}"
                     if settings else "")
                  + (" (in-sample: the router was fitted on the same questions)"
                     if val.get("in_sample") else "") + ":", "",
                  *table(["method", "questions", "accuracy"],
                         [(r["method"] + (" (chosen)" if r["method"] == method["method"] else ""),
                           r["n"], with_ci(r["accuracy"], r.get("ci"))) for r in val["table"]])]
    return lines


def sweep_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The sweep's rows by escalation mode then k; money per question when priced; * marks the
    accuracy-vs-calls frontier."""
    priced = any(r.get("money") is not None for r in rows)
    return table(
        ["k", "escalation", "accuracy", "mean k", "experts used", "expert calls",
         "calls per question", *(["money per question"] if priced else []),
         "answers generated (new)", "frontier"],
        [(r["k"], r.get("escalation", "-"), with_ci(r.get("accuracy"), r.get("accuracy_ci")),
          f"{r.get('mean_k', r['k']):.2f}", r.get("distinct_experts", "-"), r.get("calls", "-"),
          f"{r['calls_per_question']:.2f}" if "calls_per_question" in r else "-",
          *([money(r.get("money_per_question"))] if priced else []), r.get("generated", "-"),
          "*" if r.get("pareto") else "")
         for r in sorted(rows, key=lambda r: (str(r.get("escalation", "")), r["k"]))])


def with_ci(value: float | None, ci) -> str:
    """"48.20% [45.10, 51.30]": a percentage with its 95% interval when there is one."""
    if value is None or not ci:
        return pct(value)
    return f"{pct(value)} [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    acc = s["accuracy"]
    rows = [
        ("questions", f"{s['n']} ({s.get('n_scored', '-')} with a gold answer)"),
        ("accuracy", "n/a (no gold answers)" if acc is None
         else f"{with_ci(acc, s.get('accuracy_ci'))} ({s.get('correct', '-')}/"
              f"{s.get('n_scored', '-')})"),
        ("k (experts per question)", str(s["k"])),
        ("mean k", f"{s['mean_k']:.2f}"),
        ("experts used", f"{s.get('distinct_experts', '-')} of "
                         f"{len(s.get('pool_experts') or s['experts'])}"),
        ("model loads", str(s.get("loads_total", "-"))),
        ("failed generations", str(s.get("errors", "-"))),
        ("wall time", f"{s.get('wall_s', 0):.2f} s"),
        *stage_rows(s),
        ("executor", str(s.get("executor", "-"))),
        *cost_rows(s),
    ]
    return rows


STAGE_NAMES = {"annotate_s": "annotate", "route_s": "route", "load_s": "load models",
               "generate_s": "generate", "aggregate_s": "aggregate"}


def stage_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """Seconds per stage with its share of the wall time, then the orchestrator's own time
    (wall minus every stage); summaries without `stages` show annotate / route only."""
    wall = s.get("wall_s") or 0.0
    share = (lambda sec: f"{sec:.2f} s ({100 * sec / wall:.1f}%)") if wall else (
        lambda sec: f"{sec:.2f} s")
    stages = s.get("stages")
    rows = []
    if stages:
        qps = f", {s['route_qps']:,} questions/s" if s.get("route_qps") else ""
        rows += [(f"stage: {STAGE_NAMES.get(key, key)}",
                  share(sec) + (qps if key == "route_s" else "")) for key, sec in stages.items()]
    elif s.get("route_qps"):
        rows.append(("annotate / route", f"{s.get('annotate_s', 0):.2f} s / "
                                         f"{s.get('route_s', 0):.3f} s ({s['route_qps']:,} questions/s)"))
    label = "orchestrator's own time" if stages else "orchestration overhead"
    rows.append((label, f"{100 * s.get('overhead_share', 0):.1f}% of wall time "
                        f"({s.get('overhead_s', 0):.2f} s)"))
    return rows


def money(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}" if value < 0.01 else f"{value:,.4f}"


def cost_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """Calls and tokens per question; money when the manifest prices every expert called."""
    cost = s.get("cost")
    if not cost:
        return []
    rows = [("expert calls per question", f"{cost['calls_per_question']:.2f}"
             + (f" ({cost['aggregator_calls']} aggregator generations in all)"
                if cost.get("aggregator_calls") else "")),
            ("tokens per question", f"{cost['tokens_in_per_question']:,.0f} in, "
                                    f"{cost['tokens_out_per_question']:,.0f} out")]
    if cost.get("money") is not None:
        rows.append(("money (manifest prices)", f"{money(cost['money'])} in all, "
                                                f"{money(cost['money_per_question'])} per question"))
    elif cost.get("unpriced"):
        rows.append(("money", "not known: no price in the manifest for "
                              + ", ".join(cost["unpriced"])))
    return rows


def expert_rows(run: RunDir) -> list[str]:
    alone = (run.evaluation or {}).get("per_expert") or {}
    header = ["expert", "calls", "loads", "tokens in", "tokens out", "load s", "generate s",
              "errors", "accuracy on its calls"] + (["accuracy alone, all questions"] if alone else [])
    rows = []
    for name, row in run.summary["experts"].items():
        rows.append([name, row.get("calls", 0), row.get("loads", 0), row.get("tokens_in", 0),
                     row.get("tokens_out", 0), f"{row.get('load_s', 0):.2f}",
                     f"{row.get('generate_s', 0):.2f}", row.get("errors", 0),
                     pct(row.get("accuracy"))] + ([pct(alone.get(name))] if alone else []))
    return table(header, rows)
