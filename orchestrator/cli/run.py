"""`orchestrate run`: a benchmark file through the pool; writes results.jsonl + summary.json."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import err, handle_errors, out, split_ids


@handle_errors
def run(
    bench: Annotated[Path, typer.Argument(help="Benchmark file (Symbolic-MoE JSON, GSM8K or generic JSONL).")],
    pool: Annotated[Path, typer.Option(help="Pool manifest (pools/*.yaml).")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder [default: runs/NAME-TIME].")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Run preset (configs/*.yaml).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N questions.")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Experts per question.")] = None,
    router: Annotated[Optional[str], typer.Option(help="Router: fixed, random, topk, knn, symbolic-moe.")] = None,
    experts: Annotated[Optional[str], typer.Option(help="Comma-separated expert ids for the router.")] = None,
    aggregator: Annotated[Optional[str], typer.Option(help="Aggregator: vote, fuse, first.")] = None,
    aggregator_expert: Annotated[Optional[str], typer.Option(help="fuse: the expert that aggregates.")] = None,
    early_exit: Annotated[Optional[bool], typer.Option(help="Skip the aggregator when all experts agree.")] = None,
    escalation: Annotated[Optional[str], typer.Option(help="Call experts in rounds, only where the answer is not decided yet: lossless (default: the answers of calling all k), confident (stop at --agreement), none.")] = None,
    no_escalation: Annotated[bool, typer.Option("--no-escalation", help="Call every chosen expert (escalation none).")] = False,
    agreement: Annotated[Optional[float], typer.Option(help="confident escalation: the leader's share of the votes cast that stops a question.")] = None,
    executor: Annotated[Optional[str], typer.Option(help="grouped or naive.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Prompts per generate call.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="New tokens per answer (overrides the pool).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for routing and sampling.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch backends.")] = None,
    profile: Annotated[Optional[Path], typer.Option(help="Skill profile JSON (for topk, knn, symbolic-moe).")] = None,
    annotator: Annotated[Optional[str], typer.Option(help="Skill annotator: embedding, llm or field.")] = None,
    adaptive_k: Annotated[Optional[bool], typer.Option(help="Send a query to its leading expert alone when that one is confidently good.")] = None,
    max_experts: Annotated[Optional[int], typer.Option(help="Load-aware: at most this many distinct experts for the whole batch.")] = None,
    neighbors: Annotated[Optional[int], typer.Option(help="knn router: validation neighbours per query.")] = None,
    baselines: Annotated[Optional[bool], typer.Option(help="Also score every expert on every question (default: on for replay/fake pools).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, symbolic-moe, gsm8k or jsonl.")] = "auto",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Answer with the fake backend; load no model.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar per expert.")] = True,
) -> None:
    """Route every question of BENCH to experts of POOL, generate grouped by expert, aggregate,
    score, and write results.jsonl and summary.json to --out."""
    from ..benchmarks.readers import read_benchmark
    from ..core import Orchestrator
    from ..evaluation import baselines as evaluate_baselines
    from ..evaluation import free_to_evaluate
    from ..outlock import claim_output
    from ..outputs import check_answered, write_run
    from .render import expert_table, summary_lines
    from .report import report_after_run

    queries = read_benchmark(bench, fmt, limit)  # a bad file fails before any model loads
    if out_dir is None:
        out_dir = Path("runs") / f"{bench.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides = dict(k=k, router=router, experts=split_ids(experts), aggregator=aggregator,
                     executor=executor, batch_size=batch_size, max_tokens=max_tokens, seed=seed,
                     threads=threads, annotator=annotator,
                     profile=str(profile) if profile else None,
                     routing=dict(adaptive_k=adaptive_k, max_experts=max_experts, neighbors=neighbors),
                     aggregator_expert=aggregator_expert, aggregation=dict(early_exit=early_exit),
                     escalation=dict(mode="none" if no_escalation else escalation,
                                     agreement=agreement))
    # --out is checked, created and locked before any model loads; a folder created here is
    # removed again if the run fails before writing anything
    with claim_output(out_dir):
        with Orchestrator.from_files(pool, config, progress=progress, dry_run=dry_run,
                                     **overrides) as orch:
            orch.check()  # every model resolves before the first one loads
            err.print(f"{len(queries)} questions x k={orch.k} on pool '{orch.pool.name}' "
                      f"({orch.config.executor} executor, batch {orch.config.batch_size})",
                      markup=False)
            result = orch.evaluate(queries)
            extra = {"benchmark": str(bench), "dry_run": dry_run}
            if baselines or (baselines is None and free_to_evaluate(orch.generation)):
                extra["evaluation"] = evaluate_baselines(orch.generation, queries, result.answers)
        check_answered(result)
        summary = write_run(out_dir, result, extra)
        report = report_after_run(out_dir)  # warns on a failed plot, never fails the run
    out.print(expert_table(summary))
    for line in summary_lines(summary, str(out_dir)):
        out.print(line, markup=False)
    if report:
        out.print(f"report     {report}", markup=False)
