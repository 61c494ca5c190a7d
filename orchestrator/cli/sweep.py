"""`orchestrate sweep`: the same questions at several k, each expert output generated once;
writes DIR/k{K}/ per k and DIR/sweep.{json,md,png}."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.table import Table

from .common import K_BY_EVIDENCE_HELP, err, handle_errors, out


@handle_errors
def sweep(
    bench: Annotated[Path, typer.Argument(help="Benchmark file (Symbolic-MoE JSON, GSM8K or generic JSONL).")],
    pool: Annotated[Path, typer.Option(help="Pool manifest (pools/*.yaml).")],
    k: Annotated[str, typer.Option("--k", help="The k values, comma-separated: 1,2,3,5.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")],
    profile: Annotated[Optional[Path], typer.Option(help="Skill profile JSON (for the profile routers).")] = None,
    router: Annotated[Optional[str], typer.Option(help="Router: fixed, random, ensemble, topk, knn, symbolic-moe.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Run preset (configs/*.yaml).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N questions.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, symbolic-moe, gsm8k or jsonl.")] = "auto",
    escalation: Annotated[Optional[str], typer.Option(help="Escalation modes to sweep, comma-separated: lossless,none (default: the preset's, lossless).")] = None,
    no_escalation: Annotated[bool, typer.Option("--no-escalation", help="Call every chosen expert.")] = False,
    k_by_evidence: Annotated[Optional[bool], typer.Option("--k-by-evidence/--fixed-k", help=K_BY_EVIDENCE_HELP + " In a sweep each k is then a cap.")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar per expert.")] = True,
    store: Annotated[Optional[Path], typer.Option(help="Generation store to reuse and write [default: the per-user store].")] = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="Neither read nor write a generation store.")] = False,
) -> None:
    """Run BENCH at every k of --k (and every escalation mode of --escalation) on one pool,
    reusing the expert outputs of smaller k (no (expert, prompt) is generated twice); writes
    each run's results and sweep.json, sweep.md and sweep.png (accuracy against expert calls
    and money, the frontier marked) to --out."""
    from ..benchmarks.readers import read_benchmark
    from ..config import load_config, load_pool
    from ..core import Orchestrator
    from ..outlock import claim_output
    from ..sweep import check_ks, parse_ks, parse_modes, run_sweep, write_sweep

    ks = parse_ks(k)
    modes = ["none"] if no_escalation else parse_modes(escalation) if escalation else None
    queries = read_benchmark(bench, fmt, limit)  # a bad file fails before any model loads
    pool_config = load_pool(pool)
    run_config = load_config(config).with_overrides(
        k=max(ks), router=router, profile=str(profile) if profile else None,
        escalation=dict(mode=modes[0] if modes else None),
        routing=dict(k_by_evidence=k_by_evidence))
    check_ks(ks, pool_config, run_config)  # every k, before anything runs
    with claim_output(out_dir):  # checked, created and locked before any model loads
        from .runstate import open_store

        with open_store(store, no_store) as db, \
                Orchestrator(pool_config, run_config, progress=progress, store=db) as orch:
            orch.check()  # every model resolves before the first one loads
            modes = modes or [orch.config.escalation.mode]
            err.print(f"{len(queries)} questions x k={','.join(map(str, ks))} x escalation "
                      f"{','.join(modes)} on pool '{orch.pool.name}' (router "
                      f"{orch.config.router})", markup=False)
            rows = run_sweep(orch, queries, ks, out_dir, extra={"benchmark": str(bench)},
                             modes=modes)
            meta = {"bench": str(bench), "pool": orch.pool.name, "router": orch.config.router}
        paths = write_sweep(out_dir, rows, meta)
    out.print(sweep_table(rows, meta))
    generated, calls = sum(r["generated"] for r in rows), sum(r["calls"] for r in rows)
    out.print(f"generated  {generated} expert outputs for {calls} expert calls "
              f"({calls - generated} reused)", markup=False)
    out.print(f"sweep      {paths['json']}, {paths['md']}, {paths['png']}", markup=False)
    folders = ", ".join(f"{out_dir}/k{r['k']}" + ("/" if len(modes) == 1 else
                                                   f"-{r['escalation']}/") for r in rows)
    out.print(f"per k      {folders} (results.jsonl, summary.json)", markup=False)


def sweep_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> Table:
    table = Table(title=f"pool {meta['pool']}, router {meta['router']}: k sweep",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    priced = any(r.get("money") is not None for r in rows)
    for col in ("k", "escalation", "acc", "calls", "calls/q", "generated", "mean k", "experts",
                *(("money/q",) if priced else ()), "frontier", "wall s"):
        table.add_column(col, justify="left" if col == "escalation" else "right", no_wrap=True)
    for r in rows:
        acc = r["accuracy"]
        table.add_row(str(r["k"]), r["escalation"], "-" if acc is None else f"{100 * acc:.2f}%",
                      str(r["calls"]), f"{r['calls_per_question']:.2f}", str(r["generated"]),
                      f"{r['mean_k']:.2f}", str(r["distinct_experts"]),
                      *((f"{r['money_per_question']:.6g}" if r["money"] is not None else "-",)
                        if priced else ()),
                      "*" if r["pareto"] else "", f"{r['wall_s']:.2f}")
    return table
