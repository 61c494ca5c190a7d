"""Which combination method a run should use, measured on the validation questions.

The validation questions are routed with the profile just built and the run's router and k,
and answered by the run's own pipeline over the experts' validation answers (a cache in front
of the executor already holds them, so votes generate nothing). Methods:

  single:E      the single best expert of the pool (no routing; its validation accuracy)
  first         the best-routed expert that answered
  vote          weighted majority (log-odds weights)
  vote-plain    plain majority
  fuse:E        candidate aggregator E fuses the routed answers (real generations: the fusion
                prompts of at most `fuse_limit` questions, one grouped execution per candidate)

The numbers are in-sample: the router was fitted on the same questions. Ties go to the method
listed first (the cheaper one). Stored in the profile as meta["methods"]:
{"n", "in_sample", "settings": {router, k}, "table": [{method, n, correct, accuracy, ci}],
 "best": row, "best_single": row}.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..benchmarks.intervals import wilson_bounds
from ..config import PoolConfig, RunConfig
from ..generation import Generation
from ..routing.base import QueryFeatures
from ..types import Query
from .profile import Profile

VOTE_METHODS = {"first": ("first", None), "vote": ("vote", "log-odds"),
                "vote-plain": ("vote", "none")}


@dataclass(frozen=True)
class MethodOptions:
    """What `build_profile` needs to measure the methods as a run would: the pool, the run's
    preset (router, k, aggregation options), the fusion candidates and the fuse budget."""

    pool: PoolConfig
    config: RunConfig
    fusers: tuple[str, ...] = ()
    fuse_limit: int | None = 50


def row(method: str, marks: Sequence[bool]) -> dict:
    n, correct = len(marks), int(sum(bool(m) for m in marks))
    return {"method": method, "n": n, "correct": correct,
            "accuracy": round(correct / n, 4) if n else None, "ci": wilson_bounds(correct, n)}


def fusers_for(pool: PoolConfig, config: RunConfig, candidates: Sequence[str] | None
               ) -> tuple[str, ...]:
    """The aggregators to measure fuse with: the candidates given, else the run's or the pool's
    configured aggregator, else none (fuse is skipped)."""
    if candidates:
        return tuple(candidates)
    named = config.aggregator_expert or pool.aggregator
    return (named,) if named else ()


def measure_methods(generation: Generation, profile: Profile, queries: Sequence[Query],
                    annotations: Sequence[Sequence[str]], options: MethodOptions) -> dict:
    """The methods table (module docstring). `generation` must answer the validation prompts
    from a cache (they were generated for the profile); `annotations` are the questions'
    skills as the profile's annotator wrote them."""
    from ..pipeline import Pipeline

    config = options.config.model_copy(update={"profile": "(being built)"}).resolved()
    ids = {q.id: i for i, q in enumerate(queries)}

    def featurize(batch: Sequence[Query], router) -> QueryFeatures:
        rows_ = [ids[q.id] for q in batch]
        emb = profile.val_emb[rows_] if getattr(router, "needs_embeddings", False) else None
        return QueryFeatures([tuple(annotations[i]) for i in rows_],
                             [profile.val_skills[i] for i in rows_], emb)

    def run(method: str, items: Sequence[Query], **update) -> dict:
        cfg = config.model_copy(update=update)
        pipe = Pipeline(options.pool, cfg, generation, profile=profile, featurizer=featurize)
        out = pipe.answer(items)
        return row(method, [bool(a.correct) for a in out.answers])

    best_e = int(np.argmax(profile.accuracy))  # ties: the first expert of the pool
    single = row(f"single:{profile.experts[best_e]}",
                 profile.val_correct[:, best_e].tolist())
    table = [single]
    for method, (aggregator, weighting) in VOTE_METHODS.items():
        aggregation = config.aggregation
        if weighting:
            aggregation = aggregation.model_copy(update={"weighting": weighting})
        table.append(run(method, queries, aggregator=aggregator, aggregation=aggregation))
    fused = list(queries[: options.fuse_limit] if options.fuse_limit else queries)
    for expert in options.fusers:
        table.append(run(f"fuse:{expert}", fused, aggregator="fuse", aggregator_expert=expert))
    best = max(table, key=lambda r: (r["accuracy"] or 0.0, -table.index(r)))
    return {"n": len(queries), "in_sample": True,
            "settings": {"router": config.router, "k": config.effective_k()},
            "table": table, "best": best, "best_single": single}
