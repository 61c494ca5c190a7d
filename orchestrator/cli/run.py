"""`orchestrate run`: a benchmark file through the pool; writes results.jsonl + summary.json."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UserError
from .common import K_BY_EVIDENCE_HELP, err, handle_errors, out, split_ids


@handle_errors
def run(
    bench: Annotated[Optional[Path], typer.Argument(help="Benchmark file (Symbolic-MoE JSON, GSM8K or generic JSONL).")] = None,
    pool: Annotated[Optional[Path], typer.Option(help="Pool manifest (pools/*.yaml).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder [default: runs/NAME-TIME].")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Run preset (configs/*.yaml).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N questions.")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Experts per question (with a profile router: the most, see --fixed-k).")] = None,
    router: Annotated[Optional[str], typer.Option(help="Router: fixed, random, topk, knn, symbolic-moe.")] = None,
    experts: Annotated[Optional[str], typer.Option(help="Comma-separated expert ids for the router.")] = None,
    aggregator: Annotated[Optional[str], typer.Option(help="Aggregator: auto (the method validation found best, from the profile; else vote), vote, fuse, first.")] = None,
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
    k_by_evidence: Annotated[Optional[bool], typer.Option("--k-by-evidence/--fixed-k", help=K_BY_EVIDENCE_HELP)] = None,
    call_cost: Annotated[Optional[float], typer.Option(help="k by evidence: the share of validation questions (0.005: half a point of accuracy) each further expert must win to be chosen [default: 0, the most accurate size].")] = None,
    baselines: Annotated[Optional[bool], typer.Option(help="Also score every expert on every question (default: on for replay/fake pools).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto, symbolic-moe, gsm8k or jsonl.")] = "auto",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Answer with the fake backend; load no model.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar per expert.")] = True,
    store: Annotated[Optional[Path], typer.Option(help="Generation store (SQLite) to reuse and write [default: the per-user store, ~/.cache/orchestrator/store.sqlite; none with --dry-run].")] = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="Neither read nor write a generation store.")] = False,
    resume: Annotated[Optional[Path], typer.Option(help="Resume the run of this --out folder with its own options (generates only what its store lacks).")] = None,
) -> None:
    """Route every question of BENCH to experts of POOL, generate grouped by expert, aggregate,
    score, and write results.jsonl and summary.json to --out. Every generation is looked up in
    and written to the generation store as batches finish: the same command again (or --resume
    DIR) after a crash or Ctrl-C generates only what is missing."""
    given = dict(locals())  # every option as typed (a comprehension has its own locals)
    options = {name: value for name, value in given.items() if name != "resume"}
    if resume is not None:
        import inspect

        from .runstate import read_options

        # options added since the folder was made take their defaults
        defaults = {name: p.default for name, p in inspect.signature(run).parameters.items()}
        options = {**{name: defaults[name] for name in RUN_OPTIONS if name in defaults},
                   **read_options(resume), "out_dir": resume}
        unknown = set(options) - set(RUN_OPTIONS)
        if unknown:
            raise UserError(f"'{resume}/run.json' holds options this version does not know "
                            f"({', '.join(sorted(unknown))}); run the command again instead.")
        options = {k: Path(v) if k in PATH_OPTIONS and v is not None else v
                   for k, v in options.items()}
    if options["bench"] is None or options["pool"] is None:
        raise UserError("Give a benchmark file and --pool POOL (or --resume DIR to resume a run).")
    execute_run(**options)


def execute_run(*, bench: Path, pool: Path, out_dir: Path | None, config, limit, k, router,
                experts, aggregator, aggregator_expert, early_exit, escalation, no_escalation,
                agreement, executor, batch_size, max_tokens, seed, threads, profile, annotator,
                adaptive_k, max_experts, neighbors, k_by_evidence, call_cost, baselines, fmt, dry_run,
                progress, store,
                no_store) -> None:
    from ..benchmarks.readers import read_benchmark
    from ..core import Orchestrator
    from ..evaluation import baselines as evaluate_baselines
    from ..evaluation import free_to_evaluate
    from ..outlock import claim_output
    from ..outputs import check_answered, write_run
    from .render import expert_table, summary_lines
    from .report import report_after_run
    from .runstate import (
        INTERRUPTED_EXIT,
        RUN_FILE,
        ctrl_c,
        made_progress,
        open_store,
        stored_of_planned,
        write_state,
    )

    given = dict(locals())  # paths made absolute: --resume works from any folder
    options = {name: given[name].resolve() if isinstance(given[name], Path) else given[name]
               for name in RUN_OPTIONS}
    queries = read_benchmark(bench, fmt, limit)  # a bad file fails before any model loads
    if out_dir is None:
        out_dir = Path("runs") / f"{bench.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    options["out_dir"] = out_dir.resolve()
    overrides = dict(k=k, router=router, experts=split_ids(experts), aggregator=aggregator,
                     executor=executor, batch_size=batch_size, max_tokens=max_tokens, seed=seed,
                     threads=threads, annotator=annotator,
                     profile=str(profile) if profile else None,
                     routing=dict(adaptive_k=adaptive_k, max_experts=max_experts, neighbors=neighbors,
                                  k_by_evidence=k_by_evidence, call_cost=call_cost),
                     aggregator_expert=aggregator_expert, aggregation=dict(early_exit=early_exit),
                     escalation=dict(mode="none" if no_escalation else escalation,
                                     agreement=agreement))
    # --out is checked, created and locked before any model loads; a folder created here is
    # removed again if the run fails before writing anything
    with claim_output(out_dir):
        # a dry run's fake answers are kept out of the per-user store unless one is named
        with open_store(store, no_store or (dry_run and store is None)) as db, \
                Orchestrator.from_files(pool, config, progress=progress, dry_run=dry_run,
                                        store=db, **overrides) as orch:
            orch.check()  # every model resolves before the first one loads
            err.print(f"{len(queries)} questions x k={orch.k} on pool '{orch.pool.name}' "
                      f"({orch.config.executor} executor, batch {orch.config.batch_size})"
                      + (f", store {db.path}" if db is not None else ""), markup=False)
            for stale in ("results.jsonl", "summary.json"):  # never mistaken for this run's
                (out_dir / stale).unlink(missing_ok=True)
            try:
                write_state(out_dir, "running", options, db)
                with ctrl_c(orch) as guard:
                    result = orch.evaluate(queries)
                if guard.fired:
                    stored, planned = stored_of_planned(result, db)
                    write_state(out_dir, "interrupted", options, db, stored=stored,
                                planned=planned)
                    where = f"in the store {db.path}" if db is not None else "(no store: lost)"
                    err.print(f"interrupted: {stored} of {planned} planned generations are "
                              f"{where}; no results were written. Resume with: orchestrate run "
                              f"--resume {out_dir.resolve()}", markup=False, soft_wrap=True)
                    raise typer.Exit(INTERRUPTED_EXIT)
                extra = {"benchmark": str(bench), "dry_run": dry_run,
                         "store": {"path": str(db.path) if db is not None else None,
                                   "from_store": result.stats.from_store,
                                   "generated": sum(s.calls for s in result.stats.experts.values())}}
                if baselines or (baselines is None and free_to_evaluate(orch.generation)):
                    extra["evaluation"] = evaluate_baselines(orch.generation, queries,
                                                             result.answers)
                check_answered(result)
            except typer.Exit:  # interrupted: run.json tells --resume what to do
                raise
            except KeyboardInterrupt:  # stopped at once (a second Ctrl-C, or nothing done yet)
                if made_progress(orch):
                    write_state(out_dir, "interrupted", options, db)
                else:
                    (out_dir / RUN_FILE).unlink(missing_ok=True)
                raise
            except Exception:  # a failed run leaves nothing (the store keeps what finished)
                (out_dir / RUN_FILE).unlink(missing_ok=True)
                raise
        summary = write_run(out_dir, result, extra)
        write_state(out_dir, "complete", options, db)
        report = report_after_run(out_dir)  # warns on a failed plot, never fails the run
    out.print(expert_table(summary))
    for line in summary_lines(summary, str(out_dir)):
        out.print(line, markup=False)
    if report:
        out.print(f"report     {report}", markup=False)


RUN_OPTIONS = tuple(execute_run.__kwdefaults__ or ()) or tuple(
    execute_run.__code__.co_varnames[:execute_run.__code__.co_kwonlyargcount])
PATH_OPTIONS = ("bench", "pool", "out_dir", "config", "profile", "store")
