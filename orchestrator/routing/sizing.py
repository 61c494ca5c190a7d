"""k chosen by evidence: each query takes the ensemble whose vote did best on validation
questions with its skills, among those of every size up to the cap (`--k`).

For the routers that rank experts one by one (topk, knn, symbolic-moe), their choice of j experts
is the first j of their choice of `cap` (the ranking, or the draws, in order). So on the
profile's validation questions the router makes its choice at the cap once, and the vote of the
first j is scored for every j = 1..cap with the `vote` aggregator's rule and the weights it
would give them (`prefix_votes_right`). The `ensemble` router scores ordered ensembles of every
size side by side (`ensemble.EnsembleRouter.sized`). Either way, per skill each candidate's share
of right votes is shrunk toward its share over all validation questions:

  est[s, t] = (right[s, t] + m * overall[t]) / (count[s] + m),   m = routing.evidence_shrinkage

and a query takes the candidate with the best mean estimate over its skills (the pool-wide best
when it has none), less `routing.call_cost` per expert (0 by default: ties go to fewer
experts; 0.005 asks each expert to win back half a point of accuracy). The prior weight m is, by default,
chosen by 5-fold cross-validation on the validation questions (`cv_shrinkage`): the largest
of 25, 100, 400, 1600 and inf (the pool-wide choice for every skill) whose held-out accuracy
is within one standard error of the best, so that per-skill choices are made only where they
hold up on questions they were not chosen on. `--fixed-k` (routing.k_by_evidence: false)
calls exactly k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..aggregation.vote import vote_weights

TIE = 1e-6  # an estimate is lowered by this much per expert: ties go to fewer experts


def prefix_votes_right(codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[N, cap] answer codes of each question's chosen experts in order (0 no answer, 1 right,
    2+ one code per wrong answer) and their vote weights -> [N, cap] whether the vote of the
    first j + 1 is right. The rule is `vote.majority`'s: the most total weight (rounded to 9
    places), then the heaviest single voter, then the earliest; no-answers do not vote."""
    n, cap = codes.shape
    present = codes > 0
    same = (codes[:, :, None] == codes[:, None, :]) & present[:, :, None]  # [N, i, j]
    first = same.argmax(axis=2)  # [N, i] first position giving position i's answer
    w = weights.astype(np.float64)
    right = np.zeros((n, cap), dtype=bool)
    for size in range(1, cap + 1):
        inside = same[:, :size, :size]
        total = np.round((inside * w[:, None, :size]).sum(axis=2), 9)  # [N, size]
        heaviest = np.where(inside, w[:, None, :size], -np.inf).max(axis=2)
        valid = present[:, :size]
        best = np.where(valid, total, -np.inf).max(axis=1, keepdims=True)
        cand = valid & (total == best)
        top = np.where(cand, heaviest, -np.inf).max(axis=1, keepdims=True)
        cand &= heaviest == top
        pos = np.where(cand, first[:, :size], cap).min(axis=1)  # [N]
        voted = pos < cap
        winner = codes[np.arange(n), np.minimum(pos, cap - 1)]
        right[:, size - 1] = voted & (winner == 1)
    return right


SHRINKAGE_GRID = (25.0, 100.0, 400.0, 1600.0, math.inf)  # tried by cross-validation
FOLDS = 5


class EvidenceTable:
    """The shrunk per-skill validation success of each candidate (an ensemble size, or an
    ordered ensemble); `choose` picks per query, ties to the cheaper candidate."""

    def __init__(self, right: np.ndarray, membership: np.ndarray, shrinkage: float,
                 sizes: np.ndarray, call_cost: float = 0.0):
        """right [N, T]: whether candidate t's vote is right on validation question n;
        membership [N, S]: the questions' skills; sizes [T]: its experts; shrinkage: the prior
        weight m of the pool-wide success (inf: the pool-wide alone); call_cost: the share of
        questions each expert must win back to be worth calling (ties go to fewer anyway)."""
        right = right.astype(np.float32)
        self.shrinkage, self.call_cost = shrinkage, call_cost
        self.overall = right.mean(axis=0) if len(right) else np.zeros(right.shape[1], np.float32)
        self.table = _shrunk(membership.T @ right, membership.sum(axis=0)[:, None],
                             self.overall, shrinkage) - _penalty(sizes, call_cost)

    def estimates(self, membership: np.ndarray) -> np.ndarray:
        """[n, S] query skills -> [n, T] estimated vote success of each candidate."""
        return _estimates(self.table, membership)

    def choose(self, membership: np.ndarray) -> np.ndarray:
        """[n, S] -> [n] the chosen candidate of each query."""
        return self.estimates(membership).argmax(axis=1)

    def sizes(self, membership: np.ndarray) -> np.ndarray:
        """A size table's (`size_table`) choice as sizes: [n, S] -> [n] in 1..cap."""
        return self.choose(membership) + 1


def _penalty(sizes: np.ndarray, call_cost: float) -> np.ndarray:
    return (TIE + call_cost) * np.asarray(sizes, dtype=np.float64)[None, :]


def _shrunk(sums: np.ndarray, count: np.ndarray, overall: np.ndarray, m: float) -> np.ndarray:
    """[S + 1, T]: per skill (right + m * overall) / (count + m), then the pool-wide row."""
    if math.isinf(m):
        per_skill = np.broadcast_to(overall, sums.shape)
    else:
        per_skill = (sums + m * overall) / np.maximum(count + m, 1e-9)
    return np.vstack([per_skill, overall[None, :]])


def _estimates(table: np.ndarray, membership: np.ndarray) -> np.ndarray:
    n_sk = membership.sum(axis=1, keepdims=True)
    return np.where(n_sk > 0, (membership @ table[:-1]) / np.maximum(n_sk, 1),
                    table[-1][None, :])


def evidence_table(right: np.ndarray, membership: np.ndarray, sizes: np.ndarray, config
                   ) -> EvidenceTable:
    """An EvidenceTable with the run config's prior weight (`routing.evidence_shrinkage`), or
    when that is None the one cross-validation picks (`cv_shrinkage`), and its call cost."""
    opts = config.routing
    shrinkage = opts.evidence_shrinkage
    if shrinkage is None:
        shrinkage = cv_shrinkage(right, membership, sizes, seed=config.seed,
                                 call_cost=opts.call_cost)
    return EvidenceTable(right, membership, shrinkage, sizes, opts.call_cost)


def cv_shrinkage(right: np.ndarray, membership: np.ndarray, sizes: np.ndarray,
                 grid: Sequence[float] = SHRINKAGE_GRID, seed: int = 0,
                 call_cost: float = 0.0) -> float:
    """The prior weight whose per-skill choices did best on held-out validation questions
    (5 folds), or rather the largest within one standard error of the best: a per-skill
    choice must earn its keep, else every skill takes the pool-wide choice (inf)."""
    n = right.shape[0]
    if n < 2 * FOLDS:
        return math.inf
    right = right.astype(np.float32)
    fold = np.random.default_rng(seed).permutation(n) % FOLDS
    sums, count = membership.T @ right, membership.sum(axis=0)[:, None]
    penalty = _penalty(sizes, call_cost)
    hits = np.zeros(len(grid))
    for f in range(FOLDS):
        held = fold == f
        if not held.any() or held.all():
            continue
        m_held = membership[held]
        kept_sums, kept_count = sums - m_held.T @ right[held], count - m_held.sum(axis=0)[:, None]
        overall = right[~held].mean(axis=0)
        rows = np.arange(int(held.sum()))
        for g, m in enumerate(grid):
            pick = _estimates(_shrunk(kept_sums, kept_count, overall, m) - penalty,
                              m_held).argmax(axis=1)
            hits[g] += right[held][rows, pick].sum()
    acc = hits / n
    best = acc.max()
    se = math.sqrt(max(best * (1 - best), 1e-12) / n)
    return max(m for m, a in zip(grid, acc) if a >= best - se - 1e-12)


def answer_codes(profile) -> np.ndarray:
    """[N, E] the profile's per-question answer codes; a profile without them (built before
    version 2) counts every wrong answer as a different one."""
    if profile.val_answers is not None:
        return np.asarray(profile.val_answers)
    correct = np.asarray(profile.val_correct, dtype=bool)
    wrong = 2 + np.arange(correct.shape[1])[None, :]
    return np.where(correct, 1, wrong).astype(np.int16)


def size_table(profile, chosen: np.ndarray, success: np.ndarray, membership: np.ndarray,
               config) -> EvidenceTable:
    """The size table of a router from its choices on the validation questions.

    chosen [N, cap]: the experts (columns of the profile) it picks for each validation question,
    in order; success [N, E]: its success estimates there (the vote's weights, as the run
    config's `aggregation.weighting` makes them: auto is log-odds for these routers). Candidate
    j is the first j + 1 experts: `sizes(...)` is each query's size."""
    rows = np.arange(chosen.shape[0])[:, None]
    codes = answer_codes(profile)[rows, chosen]
    weighting = config.aggregation.weighting
    mode = "log-odds" if weighting == "auto" else weighting
    weights = vote_weights(success[rows, chosen], option_counts(profile)[:, None], mode)
    right = prefix_votes_right(codes, weights)
    return evidence_table(right, membership, np.arange(1, chosen.shape[1] + 1), config)


def option_counts(profile) -> np.ndarray:
    """[N] the number of options of each validation question (10 where unknown or none, as
    the vote aggregator counts a question without options)."""
    n = len(profile.val_ids)
    given = profile.val_options
    counts = np.full(n, 10, dtype=np.int64) if given is None else np.asarray(given, np.int64)
    return np.where(counts > 0, counts, 10)


def truncate(chosen: Sequence[np.ndarray], sizes: np.ndarray) -> list[np.ndarray]:
    """Each query's choice cut to its size (a shorter choice, e.g. adaptive k's one sure
    expert, is kept)."""
    return [c[:int(s)] for c, s in zip(chosen, sizes)]
