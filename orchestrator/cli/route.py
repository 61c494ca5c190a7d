"""`orchestrate route`: explain routing decisions without generating anything."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import K_BY_EVIDENCE_HELP, err, handle_errors, out


@handle_errors
def route(
    bench: Annotated[Path, typer.Argument(help="Benchmark file.")],
    pool: Annotated[Path, typer.Option(help="Pool manifest.")],
    profile: Annotated[Optional[Path], typer.Option(help="Skill profile JSON.")] = None,
    router: Annotated[Optional[str], typer.Option(help="Router name.")] = None,
    annotator: Annotated[Optional[str], typer.Option(help="embedding, llm or field.")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Experts per question (with a profile router: the most, see --fixed-k).")] = None,
    k_by_evidence: Annotated[Optional[bool], typer.Option("--k-by-evidence/--fixed-k", help=K_BY_EVIDENCE_HELP)] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N questions.")] = 10,
    config: Annotated[Optional[Path], typer.Option(help="Run preset.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per question.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="auto, symbolic-moe, gsm8k or jsonl.")] = "auto",
) -> None:
    """Print, per question, the skills, the chosen experts, their scores and the evidence."""
    from ..benchmarks.readers import read_benchmark
    from ..core import Orchestrator

    queries = read_benchmark(bench, fmt, limit)
    with Orchestrator.from_files(pool, config, router=router, k=k, annotator=annotator,
                                 profile=str(profile) if profile else None,
                                 routing=dict(k_by_evidence=k_by_evidence)) as orch:
        start = time.perf_counter()
        selections = orch.route(queries)
        seconds = time.perf_counter() - start
    for q, sel in zip(queries, selections):
        if as_json:
            out.print(json.dumps({"id": q.id, "router": sel.router, "skills": sel.skills,
                                  "experts": sel.experts, "scores": sel.scores,
                                  "success": dict(sel.success), "evidence": sel.evidence},
                                 default=str), markup=False)
            continue
        out.print(f"[bold]{q.id}[/]  {q.question[:90]!r}")
        skills = sel.skills
        if skills:
            out.print(f"  skills:  {', '.join(skills)}", markup=False)
        for e, s in zip(sel.experts, sel.scores):
            ev = (sel.evidence.get("profile") or {}).get(e) or []
            detail = "; ".join(f"{x['skill']}: est {x['estimate']:.2f} (n={x['count']})"
                               for x in ev[:3])
            out.print(f"  {e:<36} {s:7.4f}  {detail}", markup=False)
        if "ensemble_estimate" in sel.evidence:
            out.print(f"  estimated vote success of this ensemble on its skills: "
                      f"{sel.evidence['ensemble_estimate']:.3f} (best ensemble overall: "
                      f"{sel.evidence['single_best_ensemble']:.3f})", markup=False)
        if "neighbors" in sel.evidence:
            out.print(f"  nearest validation questions: {', '.join(sel.evidence['neighbors'])}",
                      markup=False)
        if sel.evidence.get("k_chosen_by") == "evidence":
            out.print(f"  k by evidence: {len(sel.experts)} of at most {orch.k} experts (the "
                      "size whose vote did best on validation for these skills)", markup=False)
    err.print(f"routed {len(queries)} questions in {seconds:.3f}s "
              f"({len(queries) / max(seconds, 1e-9):,.0f} questions/s, annotation included)",
              markup=False)
