"""`orchestrate profile`: score every expert of a pool per skill on validation data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import err, handle_errors, out, split_ids


@handle_errors
def profile(
    pool: Annotated[Path, typer.Option(help="Pool manifest (pools/*.yaml).")],
    data: Annotated[Path, typer.Option(help="Validation file with gold answers.")],
    out_path: Annotated[Path, typer.Option("--out", help="Profile JSON to write (arrays go beside it as .npz).")],
    annotator: Annotated[str, typer.Option(help="embedding, llm or field.")] = "embedding",
    annotator_expert: Annotated[Optional[str], typer.Option(help="llm annotator: the expert that writes keywords.")] = None,
    vocabulary: Annotated[Optional[Path], typer.Option(help="Skill vocabulary YAML (embedding annotator).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N questions.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Run preset (configs/*.yaml).")] = None,
    prior_strength: Annotated[float, typer.Option(help="Shrinkage weight toward an expert's global accuracy.")] = 10.0,
    fmt: Annotated[str, typer.Option("--format", help="auto, symbolic-moe, gsm8k or jsonl.")] = "auto",
    split: Annotated[Optional[str], typer.Option(help="Keep only questions tagged with this Symbolic-MoE split (e.g. train).")] = None,
    aggregators: Annotated[Optional[str], typer.Option(help="Comma-separated candidate fusion experts to rank on a synthetic aggregation benchmark.")] = None,
    aggregation_limit: Annotated[int, typer.Option(help="Items of the aggregation benchmark.")] = 50,
    methods: Annotated[bool, typer.Option(help="Measure the combination methods a run could use (vote, plain vote, first, the single best expert, fuse) on the validation questions routed as the run would; `run --aggregator auto` uses the best.")] = True,
    method_limit: Annotated[int, typer.Option(help="fuse methods: fuse at most this many validation questions per candidate (real generations).")] = 50,
    k: Annotated[Optional[int], typer.Option("--k", help="Methods: experts per question of the run to measure for [default: the preset's].")] = None,
    router: Annotated[Optional[str], typer.Option(help="Methods: the run's router [default: the preset's].")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar per expert.")] = True,
    store: Annotated[Optional[Path], typer.Option(help="Generation store to reuse and write [default: the per-user store].")] = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="Neither read nor write a generation store.")] = False,
) -> None:
    """Run every expert on DATA, score the answers, annotate skills, write a versioned profile."""
    from ..benchmarks.readers import read_benchmark
    from ..config import load_config
    from ..core import Orchestrator
    from ..errors import OutputError
    from ..outlock import claim_output
    from ..profiling.methods import MethodOptions, fusers_for
    from ..routing.base import check_experts, check_k
    from ..skills import DEFAULT_VOCABULARY, FieldAnnotator
    from ..skills.vocabulary import load_vocabulary

    queries = read_benchmark(data, fmt)
    if split:
        queries = [q for q in queries
                   if any(t.get("split") == split for t in q.meta.get("symbolic_moe") or [])]
    if limit:
        queries = queries[:limit]
    if not queries:
        raise typer.BadParameter(f"no questions left in {data} after --split/--limit")
    if out_path.suffix == ".npz":
        raise OutputError(f"--out '{out_path}' ends in .npz, the name of the arrays file written "
                          "beside the profile; give the profile's .json path.")
    if annotator == "field":  # the field annotator reads `domain`: check before generating
        FieldAnnotator().annotate(queries)
    # --out (and the .npz beside it) is checked and locked before any model loads
    with claim_output(out_path, file=True, companions=[out_path.with_suffix(".npz")]):
        from .runstate import open_store

        with open_store(store, no_store) as db, \
                Orchestrator.from_files(pool, config, progress=progress, router="fixed", k=1,
                                        store=db, annotator=annotator,
                                        annotator_expert=annotator_expert,
                                        vocabulary=str(vocabulary) if vocabulary else None) as orch:
            orch.check()
            vocab = None
            if annotator == "embedding":
                vocab = load_vocabulary(vocabulary or DEFAULT_VOCABULARY).skills
            err.print(f"profiling {len(orch.specs)} experts on {len(queries)} questions "
                      f"({annotator} annotator)", markup=False)
            candidates = split_ids(aggregators)
            if candidates:
                check_experts(candidates, orch.pool)  # before any generation
            measure = None
            if methods:  # the run's own settings (not the profile's fixed k=1 routing)
                run_config = load_config(config).with_overrides(k=k, router=router)
                check_k(run_config.effective_k(), orch.pool)
                measure = MethodOptions(orch.pool, run_config,
                                        fusers_for(orch.pool, run_config, candidates),
                                        method_limit)
            prof = orch.build_profile(queries, orch.annotator, orch.embedder, vocabulary=vocab,
                                      prior_strength=prior_strength, aggregators=candidates,
                                      aggregation_limit=aggregation_limit, methods=measure)
        prof.meta.update({"data": str(data), "split": split, "limit": limit})
        path = prof.save(out_path)
    acc = sorted(zip(prof.accuracy, prof.experts), reverse=True)
    for a, e in acc[:10]:
        out.print(f"{e:<40} {100 * a:6.2f}%", markup=False)
    ranked = prof.meta.get("aggregators")
    if ranked:
        out.print(f"aggregators on {ranked['n_items']} synthetic items (1 right + 2 wrong "
                  "responses each): " + ", ".join(
                      f"{r['expert']} {100 * r['accuracy']:.1f}%" for r in ranked["ranking"]),
                  markup=False)
    for line in methods_lines(prof.meta.get("methods")):
        out.print(line, markup=False)
    out.print(f"profile: {len(prof.experts)} experts x {len(prof.skills)} skills on "
              f"{len(prof.val_ids)} questions -> {path} (+ {path.with_suffix('.npz').name})",
              markup=False)


def methods_lines(record: dict | None) -> list[str]:
    if not record:
        return []
    settings = record["settings"]
    lines = [f"methods on {record['n']} validation questions, routed by {settings['router']} "
             f"with k={settings['k']} (in-sample: the router was fitted on them):"]
    for row in record["table"]:
        ci = row.get("ci") or [0, 0]
        mark = "  <- best" if row["method"] == record["best"]["method"] else ""
        lines.append(f"  {row['method']:<32} {100 * row['accuracy']:6.2f}%  "
                     f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]  n={row['n']}{mark}")
    return lines
