"""Reference points on the same questions as a routed run: best single expert, a random single
expert (expected accuracy), majority vote of all experts, and the oracle (any expert right).
Needs every expert's answer to every question, which replay pools give for free."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .aggregation.vote import majority
from .benchmarks.extract import equivalent_answers, is_correct
from .benchmarks.intervals import paired_bootstrap, wilson_bounds
from .generation import Generation, every_expert
from .types import Answer, Query

NO_DOMAIN = "(none)"  # the domain of questions that have none


def all_expert_answers(generation: Generation, queries: Sequence[Query]
                       ) -> tuple[list[str], np.ndarray, list]:
    """(expert ids, [n, E] correctness, [n][E] extracted answers) with every expert on every
    question, in one grouped execution."""
    experts = list(generation.specs)
    col = {e: j for j, e in enumerate(experts)}
    correct = np.zeros((len(queries), len(experts)), dtype=bool)
    answers: list[list[str | None]] = [[None] * len(experts) for _ in queries]
    for i, (q, outs) in enumerate(zip(queries, every_expert(generation, queries, experts))):
        for out in outs:
            if out.error is None:
                answers[i][col[out.expert]] = out.answer
                correct[i, col[out.expert]] = bool(is_correct(out.answer, q.gold, q.answer_type))
    return experts, correct, answers


def baselines(generation: Generation, queries: Sequence[Query], routed: Sequence[Answer]) -> dict:
    scored = [i for i, q in enumerate(queries) if q.gold is not None]
    if not scored:
        return {}
    scored_queries = [queries[i] for i in scored]
    experts, correct, answers = all_expert_answers(generation, scored_queries)
    refs = reference_points(scored_queries, experts, correct, answers)
    routed_ok = np.array([bool(routed[i].correct) for i in scored])
    best = experts.index(refs["best_single"]["expert"])
    diff = paired_bootstrap(routed_ok.tolist(), correct[:, best].tolist())
    return {
        "n": len(scored),
        "routed": round(float(routed_ok.mean()), 4),
        "routed_ci": wilson_bounds(int(routed_ok.sum()), len(routed_ok)),
        **refs,
        # routed minus the best single expert on the same questions, 95% paired bootstrap
        "routed_vs_best_single": {"difference": round(diff.estimate, 4),
                                  "ci": [round(diff.low, 4), round(diff.high, 4)],
                                  "method": diff.method},
        "per_domain": per_domain([q.domain for q in scored_queries], routed_ok, correct, best),
    }


def reference_points(queries: Sequence[Query], experts: Sequence[str], correct: np.ndarray,
                     answers: Sequence[Sequence[str | None]]) -> dict:
    """Best single expert, random single expert, majority vote of all and oracle, from every
    expert's answers ([n][E]) and correctness ([n, E]) on the same questions."""
    per_expert = correct.mean(axis=0)
    best = int(per_expert.argmax())
    votes = [majority(equivalent_answers(row, q.answer_type))[0]
             for row, q in zip(answers, queries)]
    vote_acc = np.mean([bool(is_correct(v, q.gold, q.answer_type))
                        for v, q in zip(votes, queries)])
    n = len(queries)
    return {
        "best_single": {"expert": experts[best], "accuracy": round(float(per_expert[best]), 4),
                        "ci": wilson_bounds(int(correct[:, best].sum()), n)},
        "random_single": round(float(per_expert.mean()), 4),
        "majority_all": round(float(vote_acc), 4),
        "oracle": round(float(correct.any(axis=1).mean()), 4),
        "per_expert": {e: round(float(a), 4) for e, a in zip(experts, per_expert)},
    }


def per_domain(domains: Sequence[str | None], routed: np.ndarray, correct: np.ndarray,
               best: int) -> dict:
    """{domain: {n, routed, best_single, oracle}} from [n] routed and [n, E] expert correctness;
    best_single is the overall best expert (column `best`) on that domain's questions."""
    names = np.array([d or NO_DOMAIN for d in domains], dtype=object)
    table = {}
    for name in sorted(set(names)):
        rows = names == name
        table[name] = {
            "n": int(rows.sum()),
            "routed": round(float(routed[rows].mean()), 4),
            "routed_ci": wilson_bounds(int(routed[rows].sum()), int(rows.sum())),
            "best_single": round(float(correct[rows, best].mean()), 4),
            "oracle": round(float(correct[rows].any(axis=1).mean()), 4),
        }
    return table


def free_to_evaluate(generation: Generation) -> bool:
    """Every expert answers from recordings or scripts: running all of them costs nothing."""
    return all(s.backend in ("replay", "fake") for s in generation.specs.values())
