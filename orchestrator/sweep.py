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
from pathlib import Path
from typing import Any

from .config import PoolConfig, RunConfig
from .errors import RoutingError, UserError
from .outputs import atomic_save_figure, atomic_write_text, check_answered, write_run
from .pipeline import Overrides
from .routing.base import check_k
from .types import Query
from .workers.cache import CachingExecutor

ROW_KEYS = ("k", "accuracy", "calls", "generated", "mean_k", "distinct_experts", "wall_s")


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
              out_dir: str | Path | None = None, extra: dict[str, Any] | None = None
              ) -> list[dict[str, Any]]:
    """One row per k, in the order given. With `out_dir`, each k's results.jsonl and
    summary.json are written to out_dir/k{K}/ as soon as that k is done."""
    check_ks(ks, orch.pool, orch.config)
    if getattr(orch, "store", None) is not None:  # the store already answers what was made
        cache, pipeline = orch.executor, orch.pipeline
    else:  # every (expert, prompt) generated once over all k, in memory
        cache = CachingExecutor(orch.executor)
        pipeline = orch.pipeline.using(cache)
    rows = []
    for k in ks:
        before = cache.misses
        result = orch.evaluate(queries, Overrides(k=k), pipeline=pipeline)
        check_answered(result, f"k={k}: ")
        outputs = [o for a in result.answers for o in a.outputs]
        acc = result.accuracy
        row = {
            "k": k,
            "accuracy": None if acc is None else round(acc, 4),
            "calls": len(outputs),
            "generated": cache.misses - before,
            "mean_k": round(result.mean_k, 3),
            "distinct_experts": result.distinct_experts,
            "wall_s": round(result.wall_s, 3),
        }
        rows.append(row)
        if out_dir is not None:
            write_run(Path(out_dir) / f"k{k}", result,
                      {**(extra or {}), "sweep": {"generated": row["generated"],
                                                  "reused": row["calls"] - row["generated"]}})
    return rows


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


def sweep_markdown(record: dict[str, Any]) -> str:
    lines = [
        f"# k sweep: {Path(record['bench']).name}",
        "",
        f"pool `{record['pool']}`, router `{record['router']}`",
        "",
        "| k | accuracy | expert calls | generated | mean k | distinct experts | wall s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        lines.append(f"| {r['k']} | {_pct(r['accuracy'])} | {r['calls']} | {r['generated']} | "
                     f"{r['mean_k']:.2f} | {r['distinct_experts']} | {r['wall_s']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_sweep(path: Path, record: dict[str, Any]) -> None:
    """Accuracy (%) against expert calls, one labelled point per k; written atomically."""
    from .extras import require_installed

    require_installed(("matplotlib",), "the sweep plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = [(r["calls"], 100 * r["accuracy"], r["k"]) for r in record["rows"]
              if r["accuracy"] is not None]
    if points:
        xs, ys, ks = zip(*points)
        ax.plot(xs, ys, marker="o", linewidth=1.5, markersize=6, color="tab:blue")
        for x, y, k in points:
            ax.annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=10)
        span = max(ys) - min(ys)
        pad = max(2.0, 0.15 * span)
        ax.set_ylim(max(0.0, min(ys) - pad), min(100.0, max(ys) + pad))
        ax.margins(x=0.12)
    else:
        ax.text(0.5, 0.5, "no gold answers: accuracy not scored", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("expert calls (answers generated or reused)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{Path(record['bench']).name}: accuracy vs expert calls\n"
                 f"pool {record['pool']}, router {record['router']}", fontsize=11)
    ax.grid(True, alpha=0.3)
    atomic_save_figure(fig, path, dpi=120)


__all__ = ["ROW_KEYS", "check_ks", "parse_ks", "plot_sweep", "run_sweep", "sweep_markdown",
           "write_sweep"]
