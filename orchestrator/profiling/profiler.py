"""Build a skill profile: every expert answers every validation question (grouped executor),
each answer is scored, the questions are annotated with skills, and per (expert, skill) the
counts are gathered (Symbolic-MoE section 3.1, with shrunken estimates on top)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np

from ..benchmarks.extract import equivalent_answers, is_correct
from ..errors import ConfigError
from ..generation import Generation, every_expert
from ..types import Query
from .aggregators import aggregation_items, rank_aggregators
from .methods import MethodOptions, measure_methods
from .profile import Profile

log = logging.getLogger(__name__)


def build_profile(generation: Generation, pool: str, queries: Sequence[Query], annotator,
                  embedder, *, vocabulary: Sequence[str] | None = None,
                  prior_strength: float = 10.0, aggregators: Sequence[str] | None = None,
                  aggregation_limit: int | None = 50, seed: int = 0,
                  methods: MethodOptions | None = None) -> Profile:
    """`vocabulary` fixes the skill list (embedding annotator); without it the skills are the
    distinct annotations themselves (llm and field annotators). `aggregators`: candidate fusion
    experts, ranked on a synthetic aggregation benchmark built from the validation outputs.
    `methods`: also measure the combination methods a run could use (`profiling.methods`;
    stored as meta["methods"])."""
    from ..workers.cache import CachingExecutor

    # Every validation answer is kept, so measuring the methods re-generates none of them.
    generation = generation.using(CachingExecutor(generation.executor))
    scored = [q for q in queries if q.gold is not None]
    if len(scored) < len(queries):
        raise ConfigError(f"{len(queries) - len(scored)} validation questions have no gold "
                          "answer; a profile needs gold answers for every question.")
    experts = list(generation.specs)
    start = time.perf_counter()
    outputs = every_expert(generation, queries, experts)  # [n_q][n_e], expert order
    n_q, n_e = len(queries), len(experts)
    answered = np.zeros((n_q, n_e), dtype=bool)
    correct = np.zeros((n_q, n_e), dtype=bool)
    codes = np.zeros((n_q, n_e), dtype=np.int16)  # 0 no answer, 1 the gold, 2+ other answers
    col = {e: j for j, e in enumerate(experts)}
    for i, (q, outs) in enumerate(zip(queries, outputs)):
        seen: dict[str, int] = {}
        said = equivalent_answers([o.answer if o.error is None else None for o in outs],
                                  q.answer_type)  # "x=5" and "5" share a code, as in a vote
        for out, answer in zip(outs, said):
            if out.error is not None:
                continue
            j = col[out.expert]
            answered[i, j] = True
            correct[i, j] = bool(is_correct(out.answer, q.gold, q.answer_type))
            if answer is not None:
                codes[i, j] = 1 if correct[i, j] else seen.setdefault(answer, len(seen) + 2)
    outputs = [[o for o in outs if o.error is None] for outs in outputs]
    log.info("validation answers: %.1fs", time.perf_counter() - start)

    annotations = annotator.annotate(queries)
    skills = list(vocabulary) if vocabulary is not None else sorted(
        {s for ann in annotations for s in ann})
    index = {s: k for k, s in enumerate(skills)}
    val_skills = [tuple(dict.fromkeys(index[s] for s in ann if s in index)) for ann in annotations]
    member = np.zeros((n_q, len(skills)), dtype=np.int32)  # [N, S] question has skill
    for i, ids in enumerate(val_skills):
        member[i, list(ids)] = 1
    counts = (answered.T.astype(np.int32)) @ member  # [E, S]
    right = (correct & answered).T.astype(np.int32) @ member
    meta = {"errors": int((~answered).sum()), "embedder": embedder.key}
    if aggregators:
        items = aggregation_items(queries, outputs, aggregation_limit, seed=seed)
        if not items:
            raise ConfigError(
                "No validation question has one right and two wrong expert answers, so the "
                "aggregation benchmark is empty; use more validation questions (drop --limit) "
                "or skip --aggregators.")
        meta["aggregators"] = rank_aggregators(generation, items, list(aggregators))
    profile = Profile(
        pool=pool,
        annotator={"name": annotator.name, **getattr(annotator, "describe", lambda: {})()},
        experts=experts, skills=skills, counts=counts, correct=right,
        n=answered.sum(0).astype(np.int32), n_correct=(correct & answered).sum(0).astype(np.int32),
        skill_emb=embedder.encode(skills), val_ids=[q.id for q in queries],
        val_emb=embedder.encode([q.question for q in queries]), val_correct=correct,
        val_skills=val_skills, val_answers=codes, prior_strength=prior_strength,
        meta=meta, val_options=np.array([len(q.options) for q in queries], dtype=np.int16),
    )
    if methods is not None:
        start = time.perf_counter()
        meta["methods"] = measure_methods(generation, profile, queries, annotations, methods)
        log.info("combination methods: %.1fs", time.perf_counter() - start)
    return profile
