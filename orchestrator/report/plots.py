"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no
display, no global state). Each function returns a Figure, or None when the run has nothing to
show for it."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .rundir import RunDir
from .stats import OVERALL, domain_accuracy, expert_usage

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110
ROUTED, BEST, ORACLE = "#1f77b4", "#ff7f0e", "#9e9e9e"
LOAD, GENERATE = "#9ecae1", "#3182bd"


def figure(width: float, height: float, layout: str = "constrained") -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def titled(fig: Figure, title: str, subtitle: str = "") -> None:
    """A left-aligned figure title, wrapped to the figure's width (about 11 characters of
    11-point text per inch)."""
    width = int(fig.get_figwidth() * 11)
    lines = [textwrap.fill(text, width) for text in (title, subtitle) if text]
    fig.suptitle("\n".join(lines), x=0.01, ha="left", fontsize=11, linespacing=1.4)


def above(ax, ncols: int = 1) -> None:
    """The legend in a row just above the plot area, clear of the data."""
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=ncols, frameon=False,
              fontsize=8, borderaxespad=0.2)


def setup(run: RunDir) -> str:
    s = run.summary
    k = f"k={s['k']}" + (f", mean k {s['mean_k']:.2f}" if s["mean_k"] != s["k"] else "")
    return f"router {s['router']}, {k}, aggregator {s['aggregator']}"


def accuracy_per_domain(run: RunDir) -> Figure | None:
    table = domain_accuracy(run)
    if not table:
        return None
    series = [("routed", f"routed system ({setup(run)})", ROUTED)]
    if "best_single" in table[OVERALL]:
        best = run.evaluation["best_single"]["expert"]
        series += [("best_single", f"best single expert overall: {best}", BEST),
                   ("oracle", "oracle: any expert of the pool right", ORACLE)]
    groups = list(table)
    x = np.arange(len(groups))
    width = 0.8 / len(series)
    fig = figure(min(14.0, max(8.0, 0.22 * len(groups) * len(series) + 4)), 5.6)
    ax = fig.add_subplot()
    for i, (key, label, color) in enumerate(series):
        values = [100 * table[g][key] for g in groups]
        yerr = None
        if key == "routed":  # the 95% Wilson interval as an error bar
            yerr = np.array([[v - 100 * table[g]["routed_ci"][0] for g, v in zip(groups, values)],
                             [100 * table[g]["routed_ci"][1] - v for g, v in zip(groups, values)]])
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label, color=color,
               yerr=yerr, capsize=2, error_kw={"elinewidth": 0.8, "ecolor": "#333333"})
    routed = [100 * table[g]["routed"] for g in groups]
    for xi, value in zip(x + (0 - (len(series) - 1) / 2) * width, routed):
        ax.annotate(f"{value:.0f}", (xi, value), xytext=(0, 2), textcoords="offset points",
                    ha="center", fontsize=7, color=ROUTED)
    ax.set_xticks(x, [f"{g} ({table[g]['n']})" for g in groups], rotation=40, ha="right",
                  rotation_mode="anchor")
    ax.get_xticklabels()[0].set_fontweight("bold")
    ax.axvline(0.5, color="#cccccc", linewidth=0.8)
    ax.set_xlabel("domain (scored questions); 'all' = every scored question")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    above(ax)
    titled(fig, f"Accuracy per domain on pool {run.summary['pool']}",
           "bars: accuracy (%), the routed bar with its 95% Wilson interval and value above it")
    return fig


def expert_usage_heatmap(run: RunDir, top: int = 20) -> Figure | None:
    usage = expert_usage(run, top)
    if usage is None:
        return None
    n_rows, n_cols = usage.counts.shape
    fig = figure(max(6.5, 0.5 * n_cols + 4), max(3.5, 0.32 * n_rows + 2.8))
    ax = fig.add_subplot()
    image = ax.imshow(usage.counts, cmap="Blues", aspect="auto", vmin=0)
    peak = usage.counts.max() or 1
    if n_rows * n_cols <= 600:
        for (i, j), count in np.ndenumerate(usage.counts):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if count > 0.6 * peak else "black")
    ax.set_xticks(range(n_cols), usage.experts, rotation=45, ha="right", rotation_mode="anchor",
                  fontsize=8)
    ax.set_yticks(range(n_rows), [f"{r} ({n})" for r, n in zip(usage.rows, usage.row_n)],
                  fontsize=8)
    ax.set_xlabel("expert")
    shown = (f"the {n_rows} most frequent of {usage.total_rows} {usage.kind}s"
             if usage.total_rows > n_rows else f"all {n_rows} {usage.kind}s")
    of = "with the skill" if usage.kind == "skill" else "of the domain"
    ax.set_ylabel(f"{usage.kind} (questions {of})")
    fig.colorbar(image, ax=ax, label=f"questions {of} sent to the expert", shrink=0.9)
    each = "with each skill" if usage.kind == "skill" else "of each domain"
    titled(fig, f"Expert usage by {usage.kind}: questions {each} sent to each expert",
           f"{shown}; {setup(run)}")
    return fig


def accuracy_vs_k(run: RunDir) -> Figure | None:
    sweep = run.sweep
    rows = sorted(one_mode((sweep or {}).get("rows") or [], run.summary),
                  key=lambda r: r["k"])
    if not rows:
        return None
    ks = [r["k"] for r in rows]
    fig = figure(6.8, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    scored = [(r["k"], 100 * r["accuracy"]) for r in rows if r.get("accuracy") is not None]
    if scored:
        kx, acc = zip(*scored)
        top.plot(kx, acc, marker="o", color=ROUTED, label="routed accuracy")
        for xi, value in scored:
            top.annotate(f"{value:.1f}", (xi, value), xytext=(0, 9), textcoords="offset points",
                         ha="center", fontsize=8)
        here = [(xi, v) for xi, v in scored if xi == run.summary["k"]]
        if here:
            top.plot(*here[0], marker="o", markersize=13, markerfacecolor="none",
                     markeredgecolor=BEST, linestyle="none", label=f"this run (k={here[0][0]})")
        top.set_ylim(max(0, min(acc) - 10), min(100, max(acc) + 10))
        top.legend(loc="lower right", fontsize=8)
    else:
        top.text(0.5, 0.5, "no gold answers: accuracy not known", ha="center",
                 transform=top.transAxes)
    top.set_ylabel("accuracy (%)")
    top.grid(alpha=0.3)
    width = 0.38
    x = np.asarray(ks, dtype=float)
    calls = bottom.bar(x - width / 2, [r["calls"] for r in rows], width, color=GENERATE,
                       label="expert calls (question x expert)")
    bottom.bar(x + width / 2, [r.get("generated", 0) for r in rows], width, color=LOAD,
               label="answers generated (new, not reused)")
    bottom.bar_label(calls, fontsize=7, padding=1)
    bottom.set_ylim(0, 1.18 * max(r["calls"] for r in rows) or 1)
    bottom.set_ylabel("count")
    bottom.set_xlabel("k (experts per question)")
    bottom.set_xticks(ks, [str(k) for k in ks])
    bottom.grid(axis="y", alpha=0.3)
    bottom.set_axisbelow(True)
    bottom.legend(loc="upper left", fontsize=8)
    bench = Path(str(sweep.get("bench", ""))).name
    titled(fig, "Accuracy and expert calls vs k (experts per question)",
           f"router {sweep.get('router', run.summary['router'])}, pool "
           f"{sweep.get('pool', run.summary['pool'])}" + (f", {bench}" if bench else ""))
    return fig


def one_mode(rows: list[dict], summary: dict) -> list[dict]:
    """A sweep over several escalation modes, reduced to this run's mode (else the first)."""
    modes = list(dict.fromkeys(r.get("escalation") for r in rows))
    if len(modes) < 2:
        return rows
    mine = (summary.get("escalation") or {}).get("mode")
    keep = mine if mine in modes else modes[0]
    return [r for r in rows if r.get("escalation") == keep]


def expert_time(run: RunDir) -> Figure | None:
    table = run.summary["experts"]
    if not table:
        return None
    names = list(table)
    load = np.array([table[e].get("load_s", 0.0) for e in names])
    gen = np.array([table[e].get("generate_s", 0.0) for e in names])
    y = np.arange(len(names))
    stages = run.summary.get("stages")
    height = max(3.0, 0.34 * len(names) + 1.8)
    fig = figure(7.5, height + (2.2 if stages else 0))
    if stages:
        top, ax = fig.subplots(2, 1, height_ratios=[1.8, height])
        stage_bar(top, run.summary)
    else:
        ax = fig.add_subplot()
    ax.barh(y, load, color=LOAD, label="model load")
    ax.barh(y, gen, left=load, color=GENERATE, label="generation")
    span = float((load + gen).max()) or 1.0
    for yi, e, end in zip(y, names, load + gen):
        row = table[e]
        note = f"{row.get('calls', 0)} calls"
        if row.get("errors"):
            note += f", {row['errors']} errors"
        ax.annotate(note, (end, yi), xytext=(3, 0), textcoords="offset points", va="center",
                    fontsize=7)
    ax.set_xlim(0, span * 1.22)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (wall time in this run)")
    ax.set_ylabel("expert (those called, pool order)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    above(ax, ncols=2)
    titled(fig, f"Where the time went on pool {run.summary['pool']}" if stages else
           f"Time per expert on pool {run.summary['pool']}",
           ("top: the run's wall time by stage (own time = the orchestrator's, outside every "
            "stage); below: " if stages else "") +
           "stacked seconds per expert: model load + generation; calls = questions answered")
    return fig


STAGE_COLORS = {"annotate_s": ("annotate", "#fdae6b"), "route_s": ("route", "#e6550d"),
                "load_s": ("load", LOAD), "generate_s": ("generate", GENERATE),
                "aggregate_s": ("aggregate", "#74c476"), "own": ("own time", "#bdbdbd")}


def stage_bar(ax, summary: dict) -> None:
    """One bar of the wall time, stacked by stage, each segment labelled with its seconds."""
    parts = [*summary["stages"].items(), ("own", summary.get("overhead_s", 0.0))]
    wall = summary.get("wall_s") or sum(v for _, v in parts) or 1.0
    left = 0.0
    for key, sec in parts:
        label, color = STAGE_COLORS.get(key, (key, "#999999"))
        ax.barh(0, sec, left=left, color=color, label=f"{label} {seconds(sec)}", height=0.6)
        if sec >= 0.08 * wall:
            ax.text(left + sec / 2, 0, seconds(sec), ha="center", va="center", fontsize=7)
        left += sec
    ax.set_xlim(0, max(wall, left) * 1.02)
    ax.set_yticks([0], [f"wall {seconds(wall)}"], fontsize=8)
    ax.set_xlabel("seconds of the run's wall time", fontsize=8)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncols=3, frameon=False, fontsize=7,
              borderaxespad=0.2)


def seconds(value: float) -> str:
    """1.2s, 0.35s, 4.1ms: readable at any scale."""
    return f"{value:.1f}s" if value >= 1 else f"{value:.2f}s" if value >= 0.1 else (
        f"{1000 * value:.1f}ms")
