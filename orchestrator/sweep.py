"""The k sweep: the same questions at several k through the one pipeline (`Overrides(k=...)` per
call, nothing mutated), every expert output generated once (through the orchestrator's
generation store when it has one, else an in-memory CachingExecutor: at k=3 the answers of the
k=2 experts are reused), then accuracy against expert calls.

Outputs: DIR/k{K}/results.jsonl + summary.json per k, and DIR/sweep.json
(`{"bench", "pool", "router", "rows": [...]}`), DIR/sweep.md and DIR/sweep.png.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .accounting import cost_record, pool_prices
from .benchmarks.intervals import wilson_bounds
from .config import PoolConfig, RunConfig
from .errors import RoutingError, UserError
from .outputs import atomic_save_figure, atomic_write_text, check_answered, write_run
from .pipeline import Overrides
from .routing.base import check_k
from .types import Query
from .workers.cache import CachingExecutor

ROW_KEYS = ("k", "escalation", "accuracy", "accuracy_ci", "calls", "calls_per_question",
            "generated", "mean_k", "distinct_experts", "tokens_in", "tokens_out", "money",
            "money_per_question", "pareto", "wall_s")
MODES = ("lossless", "confident", "none")


def parse_ks(text: str) -> list[int]:
    """The --k list: "1,2,3,5" -> [1, 2, 3, 5], sorted, unique, positive."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        ks = sorted({int(p) for p in parts})
    except ValueError:
        ks = []
    if not ks or ks[0] < 1:
        raise UserError(
            f"--k takes comma-separated positive integers such as 1,2,3,5; got '{text}'."
        )
    return ks


def parse_modes(text: str) -> list[str]:
    """The --escalation list: "lossless,none" -> ["lossless", "none"], in order, unique."""
    modes = list(dict.fromkeys(p.strip() for p in str(text).split(",") if p.strip()))
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise UserError(f"--escalation takes comma-separated modes of {', '.join(MODES)} such "
                        f"as lossless,none; got '{text}'.")
    return modes


def pareto(points: Sequence[tuple[float, float | None]]) -> list[bool]:
    """(cost, accuracy) points -> whether each is on the accuracy-vs-cost frontier: no other
    point is at most as costly and at least as accurate, and better in one (unscored: no)."""
    flags = []
    for i, (cost, acc) in enumerate(points):
        flags.append(acc is not None and not any(
            j != i and a is not None and c <= cost and a >= acc and (c < cost or a > acc)
            for j, (c, a) in enumerate(points)))
    return flags


def check_ks(ks: Sequence[int], pool: PoolConfig, config: RunConfig | None = None) -> None:
    """Every k fits the pool (and the named experts), before anything runs."""
    for k in ks:
        check_k(k, pool)
    named = config.experts if config else None
    if named and config.resolved().router == "fixed" and set(ks) != {len(named)}:
        raise RoutingError(
            f"The fixed router was given {len(named)} experts ({', '.join(named)}), so it has "
            f"one k; drop `experts` from the preset to sweep k over the pool's first experts."
        )
    if named and max(ks) > len(named):
        raise RoutingError(f"k={max(ks)} but only {len(named)} experts were named.")


def run_sweep(orch, queries: Sequence[Query], ks: Sequence[int],
              out_dir: str | Path | None = None, extra: dict[str, Any] | None = None,
              modes: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per (escalation mode, k), modes outer, k in the order given; `modes` default
    to the run's own. With `out_dir`, each one's results.jsonl and summary.json are written to
    out_dir/k{K}/ (one mode) or out_dir/k{K}-{mode}/ as soon as it is done. Rows on the
    accuracy-vs-calls frontier have `pareto` true."""
    check_ks(ks, orch.pool, orch.config)
    modes = list(modes or [orch.config.escalation.mode])
    if getattr(orch, "store", None) is not None:  # the store already answers what was made
        cache, pipeline = orch.executor, orch.pipeline
    else:  # every (expert, prompt) generated once over all k, in memory
        cache = CachingExecutor(orch.executor)
        pipeline = orch.pipeline.using(cache)
    prices = pool_prices(orch.pool)
    rows = []
    for mode in modes:
        for k in ks:
            before = cache.misses
            result = orch.evaluate(queries, Overrides(k=k, escalation=mode), pipeline=pipeline)
            result = replace(result, config=result.config.model_copy(update={
                "escalation": result.config.escalation.model_copy(update={"mode": mode})}))
            check_answered(result, f"k={k}: " if len(modes) == 1 else f"k={k}, {mode}: ")
            rows.append(sweep_row(result, mode, cache.misses - before, prices))
            if out_dir is not None:
                folder = f"k{k}" if len(modes) == 1 else f"k{k}-{mode}"
                write_run(Path(out_dir) / folder, result, {**(extra or {}), "sweep": {
                    "generated": rows[-1]["generated"],
                    "reused": rows[-1]["calls"] - rows[-1]["generated"]}})
    for row, on in zip(rows, pareto([(r["calls"], r["accuracy"]) for r in rows])):
        row["pareto"] = on
    return rows


def sweep_row(result, mode: str, generated: int, prices: dict[str, Any]) -> dict[str, Any]:
    """One (k, mode) of the sweep: accuracy with its 95% interval, expert calls (the
    aggregator's generations included), tokens, money when the manifest prices every expert."""
    cost = cost_record(result.answers, prices)
    acc, n = result.accuracy, len(result.scored)
    return {
        "k": result.k,
        "escalation": mode,
        "accuracy": None if acc is None else round(acc, 4),
        "accuracy_ci": wilson_bounds(sum(bool(a.correct) for a in result.scored), n),
        "calls": cost["calls"],
        "calls_per_question": cost["calls_per_question"],
        "generated": generated,
        "mean_k": round(result.mean_k, 3),
        "distinct_experts": result.distinct_experts,
        "tokens_in": cost["tokens_in"],
        "tokens_out": cost["tokens_out"],
        "money": cost["money"],
        "money_per_question": cost["money_per_question"],
        "pareto": False,
        "wall_s": round(result.wall_s, 3),
    }


def write_sweep(out_dir: str | Path, rows: Sequence[dict[str, Any]],
                meta: dict[str, Any]) -> dict[str, Path]:
    """sweep.json, sweep.md and sweep.png in out_dir; returns their paths."""
    out = Path(out_dir)
    paths = {"json": out / "sweep.json", "md": out / "sweep.md", "png": out / "sweep.png"}
    record = {"bench": str(meta["bench"]), "pool": str(meta["pool"]),
              "router": str(meta["router"]), "rows": [dict(r) for r in rows]}
    atomic_write_text(paths["json"], json.dumps(record, indent=2) + "\n")
    atomic_write_text(paths["md"], sweep_markdown(record))
    plot_sweep(paths["png"], record)
    return paths


def _pct(acc: float | None) -> str:
    return "-" if acc is None else f"{100 * acc:.2f}%"


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def sweep_markdown(record: dict[str, Any]) -> str:
    rows = record["rows"]
    priced = any(r.get("money") is not None for r in rows)
    lines = [
        f"# k sweep: {Path(record['bench']).name}",
        "",
        f"pool `{record['pool']}`, router `{record['router']}`; frontier: no other row is as "
        "cheap (expert calls) and as accurate",
        "",
        "| k | escalation | accuracy | 95% interval | expert calls | calls/question | "
        "generated | mean k | distinct experts |" + (" money |" if priced else "")
        + " frontier | wall s |",
        "|---:|:---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if priced else "")
        + ":---:|---:|",
    ]
    for r in rows:
        ci = r.get("accuracy_ci")
        lines.append(
            f"| {r['k']} | {r.get('escalation', '-')} | {_pct(r['accuracy'])} | "
            + (f"{100 * ci[0]:.2f} to {100 * ci[1]:.2f}" if ci else "-")
            + f" | {r['calls']} | {r.get('calls_per_question', 0):.2f} | {r['generated']} | "
            f"{r['mean_k']:.2f} | {r['distinct_experts']} | "
            + (f"{_money(r.get('money'))} | " if priced else "")
            + f"{'yes' if r.get('pareto') else ''} | {r['wall_s']:.2f} |")
    return "\n".join(lines) + "\n"


MODE_STYLE = {"none": ("tab:gray", "s"), "lossless": ("tab:blue", "o"),
              "confident": ("tab:orange", "^")}


def plot_sweep(path: Path, record: dict[str, Any]) -> None:
    """Accuracy (%) against expert calls per question (and money per question when priced):
    one line per escalation mode, one labelled point per k, the frontier marked; written
    atomically."""
    from .extras import require_installed

    require_installed(("matplotlib",), "the sweep plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in record["rows"] if r["accuracy"] is not None]
    priced = rows and all(r.get("money") is not None for r in rows)
    fig = Figure(figsize=(11.6 if priced else 6.8, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True) if priced else [fig.add_subplot()]
    costs = [("calls_per_question", "expert calls per question (aggregator generations "
              "included)")]
    if priced:
        costs.append(("money_per_question", "money per question (manifest prices)"))
    for ax, (key, xlabel) in zip(axes, costs):
        if not rows:
            ax.text(0.5, 0.5, "no gold answers: accuracy not scored", ha="center",
                    va="center", transform=ax.transAxes)
        def x_of(r: dict[str, Any], key: str = key) -> float:
            return r[key] if r.get(key) is not None else r["calls"]

        for mode in dict.fromkeys(r.get("escalation", "-") for r in rows):
            line = sorted((r for r in rows if r.get("escalation", "-") == mode), key=x_of)
            color, marker = MODE_STYLE.get(mode, ("tab:green", "D"))
            ax.plot([x_of(r) for r in line], [100 * r["accuracy"] for r in line], marker=marker,
                    color=color, linewidth=1.5, markersize=6, label=f"escalation {mode}")
            for r in line:
                ax.annotate(f"k={r['k']}", (x_of(r), 100 * r["accuracy"]),
                            textcoords="offset points", xytext=(5, 5), fontsize=8, color=color)
        flags = pareto([(x_of(r), r["accuracy"]) for r in rows])
        front = sorted((r for r, on in zip(rows, flags) if on), key=x_of)
        if front:
            ax.step([x_of(r) for r in front], [100 * r["accuracy"] for r in front],
                    where="post", color="black", linestyle="--", linewidth=1, zorder=1)
            ax.plot([x_of(r) for r in front], [100 * r["accuracy"] for r in front],
                    linestyle="none", marker="o", markersize=12, markerfacecolor="none",
                    markeredgecolor="black", label="frontier (nothing cheaper is as accurate)")
        if rows:
            ys = [100 * r["accuracy"] for r in rows]
            pad = max(2.0, 0.15 * (max(ys) - min(ys)))
            ax.set_ylim(max(0.0, min(ys) - pad), min(100.0, max(ys) + pad))
            ax.margins(x=0.12)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    fig.suptitle(f"{Path(record['bench']).name}: accuracy vs cost across k and escalation\n"
                 f"pool {record['pool']}, router {record['router']}", fontsize=11)
    atomic_save_figure(fig, path, dpi=120)


__all__ = ["MODES", "ROW_KEYS", "check_ks", "pareto", "parse_ks", "parse_modes", "plot_sweep",
           "run_sweep", "sweep_markdown", "sweep_row", "write_sweep"]
