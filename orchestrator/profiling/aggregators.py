"""Choosing the fusion aggregator (Symbolic-MoE section 3.3, Mixture-of-Agents' finding that a
good proposer is not always a good aggregator): a synthetic aggregation benchmark is built from
the validation outputs (per question one correct and two incorrect expert responses, shuffled;
questions without both kinds are skipped), every candidate fuses each item, and the candidates
are ranked by how often their fused answer is right."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..aggregation.fuse import fusion_requests
from ..benchmarks.extract import extract_answer, is_correct
from ..errors import UnknownNameError
from ..generation import Generation
from ..types import ExpertOutput, Query


@dataclass(frozen=True)
class AggregationItem:
    query: Query
    responses: tuple[ExpertOutput, ...]  # one right, two wrong, shuffled


def aggregation_items(queries: Sequence[Query], outputs: Sequence[Sequence[ExpertOutput]],
                      limit: int | None = None, seed: int = 0) -> list[AggregationItem]:
    """One right and two wrong responses per question (of different experts), shuffled."""
    rng = random.Random(seed)
    items = []
    for query, outs in zip(queries, outputs):
        scored = [(o, is_correct(o.answer, query.gold, query.answer_type))
                  for o in outs if o.error is None]
        right = [o for o, ok in scored if ok]
        wrong = [o for o, ok in scored if not ok]
        if not right or len(wrong) < 2:
            continue
        picked = [rng.choice(right), *rng.sample(wrong, 2)]
        rng.shuffle(picked)
        items.append(AggregationItem(query, tuple(picked)))
        if limit is not None and len(items) >= limit:
            break
    return items


def rank_aggregators(generation: Generation, items: Sequence[AggregationItem],
                     candidates: Sequence[str]) -> dict:
    """Every candidate fuses every item; all prompts run in one grouped execution (each
    candidate loads once). Returns {"n_items", "ranking": [{expert, accuracy, correct}]}."""
    unknown = [c for c in candidates if c not in generation.specs]
    if unknown or len(set(candidates)) != len(candidates):
        raise UnknownNameError("aggregator candidate", (unknown or list(candidates))[0],
                               list(generation.specs))
    queries = [item.query for item in items]
    responses = [[o.text for o in item.responses] for item in items]
    requests = []
    for expert in candidates:
        requests += fusion_requests(generation, expert, queries, responses, len(requests))
    results, _ = generation.execute(requests)
    correct = dict.fromkeys(candidates, 0)
    by_id = {item.query.id: item.query for item in items}
    for res in results:
        q = by_id[res.request.query_id]
        answer = extract_answer(res.text, q.answer_type, q.options) if res.error is None else None
        correct[res.request.expert] += bool(is_correct(answer, q.gold, q.answer_type))
    n = len(items)
    ranking = sorted(
        ({"expert": e, "correct": c, "accuracy": round(c / n, 4) if n else None}
         for e, c in correct.items()),
        key=lambda row: (-(row["accuracy"] or 0.0), candidates.index(row["expert"])),
    )
    return {"n_items": n, "ranking": ranking}
