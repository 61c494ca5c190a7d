"""`ensemble`: vote-aware routing. Picks the ordered k experts whose MAJORITY VOTE is most often
right on validation questions with the query's skills, not the k individually best experts.

Individually strong experts are often wrong together (same base model, same training data), and
the order decides a vote where all disagree. So the router scores whole candidate ensembles:
for each candidate (ordered k-tuples of the `candidates` best experts), its vote's success on
the validation questions of each skill, shrunk toward its success on all of them:

  est[s, t] = (right[s, t] + m * global[t]) / (count[s] + m),    m = routing.ensemble_shrinkage

A query takes the candidate with the best mean estimate over its skills (the global one when it
has none). With few validation questions per skill, or skills that do not separate the experts,
this falls back to the single best ensemble; with specialists (math vs law experts) it routes
per skill. The vote rule matches the `vote` aggregator: most votes, ties to the earliest expert,
no-answers do not vote. Needs a profile with per-question answers (version 2).

With k by evidence (the default) k is a cap: the candidates of every size 1..k are scored side
by side and the prior weight is `routing.evidence_shrinkage`, by default chosen by
cross-validation (`sizing`); with `--fixed-k`, the candidates have k experts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from ..errors import RoutingError
from ..types import Query, Selection
from .base import QueryFeatures, RouterBase, check_k
from .graph import RoutingGraph
from .policy import choose_subset, confident
from .sizing import EvidenceTable, evidence_table

MAX_CANDIDATES = 2000  # ordered tuples scored; beyond it, one order per set (best first)


def vote_correct(codes: np.ndarray, tuples: np.ndarray) -> np.ndarray:
    """[N, E] answer codes (0 none, 1 right, 2+ wrong), [T, k] expert tuples in order ->
    [N, T] whether each tuple's majority vote is right."""
    votes = codes[:, tuples]  # [N, T, k]
    k = tuples.shape[1]
    present = votes > 0
    support = np.zeros(votes.shape, dtype=np.int16)
    for j in range(k):
        support += (votes == votes[:, :, j:j + 1]) & present[:, :, j:j + 1]
    # earliest among the most supported: score = support * (k + 1) - position
    rank = np.where(present, support * (k + 1) - np.arange(k, dtype=np.int16), -1)
    winner = np.take_along_axis(votes, rank.argmax(axis=2)[:, :, None], axis=2)[:, :, 0]
    return winner == 1


def candidate_tuples(accuracy: np.ndarray, k: int, size: int) -> np.ndarray:
    """Ordered k-tuples of the `size` most accurate experts (all orders when affordable)."""
    best = [int(i) for i in np.argsort(-accuracy, kind="stable")[:max(size, k)]]
    if math.perm(len(best), k) <= MAX_CANDIDATES:
        return np.array(list(itertools.permutations(best, k)), dtype=np.int64)
    return np.array(list(itertools.combinations(best, k)), dtype=np.int64)  # best-first order


class EnsembleRouter(RouterBase):
    name = "ensemble"
    needs_profile = True

    def __init__(self, pool, config, profile=None):
        super().__init__(pool, config, profile)
        if self.profile.val_answers is None:
            raise RoutingError(
                "The ensemble router needs per-question answers in the profile (profile "
                "version 2); rebuild it with `orchestrate profile`."
            )
        self.graph = RoutingGraph(self.profile)
        opts = config.routing
        self.size, self.shrinkage = opts.candidates, opts.ensemble_shrinkage
        self.membership = self.graph.membership(self.profile.val_skills)  # [N, S]
        self._right: dict[tuple[int, tuple[int, ...]], tuple[np.ndarray, np.ndarray]] = {}
        self._tables: dict[tuple[int, tuple[int, ...]], tuple[np.ndarray, np.ndarray]] = {}
        self._sized: dict[tuple[int, tuple[int, ...]], tuple[list[np.ndarray], EvidenceTable]] = {}
        k = config.effective_k()
        if 1 <= k <= len(self.graph.experts) and config.routing.max_experts is None:
            every = list(range(len(self.graph.experts)))  # built once, like the graph
            self.sized(k, every) if opts.k_by_evidence else self.table(k, every)

    def sized(self, cap: int, allowed: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray]:
        """k chosen by evidence: the candidates of every size 1..cap side by side (tuples of
        different lengths, [S + 1, T1 + ... + Tcap] estimates, ties to the smaller)."""
        tuples, table = self.evidence_table(cap, allowed)
        return tuples, table.table

    def evidence_table(self, cap: int, allowed: Sequence[int]
                       ) -> tuple[list[np.ndarray], EvidenceTable]:
        key = (cap, tuple(allowed))
        if key not in self._sized:
            parts = [self.candidates(size, allowed) for size in range(1, cap + 1)]
            tuples = [row for size_tuples, _ in parts for row in size_tuples]
            sizes = np.concatenate([np.full(t.shape[0], t.shape[1]) for t, _ in parts])
            right = np.hstack([r for _, r in parts])
            self._sized[key] = tuples, evidence_table(right, self.membership, sizes, self.config)
        return self._sized[key]

    def candidates(self, k: int, allowed: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(candidate tuples [T, k], whether each one's vote is right [N, T])."""
        key = (k, tuple(allowed))
        if key not in self._right:
            acc = np.full(self.profile.accuracy.shape, -1.0)
            acc[list(allowed)] = self.profile.accuracy[list(allowed)]
            tuples = candidate_tuples(acc, k, min(self.size, len(allowed)))
            self._right[key] = tuples, vote_correct(self.profile.val_answers, tuples)
        return self._right[key]

    def table(self, k: int, allowed: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(candidate tuples [T, k], shrunk vote success per skill [S + 1, T]; last row global)."""
        key = (k, tuple(allowed))
        if key not in self._tables:
            tuples, right = self.candidates(k, allowed)
            self._tables[key] = tuples, EvidenceTable(
                right, self.membership, self.shrinkage, np.zeros(len(tuples))).table
        return self._tables[key]

    def select(self, queries: Sequence[Query], k: int,
               features: QueryFeatures | None = None) -> list[Selection]:
        check_k(k, self.pool)
        opts = self.config.routing
        per_expert, stderr = self.graph.skill_estimates(features.skill_ids)  # [n, E]
        allowed = list(range(len(self.graph.experts)))
        if opts.max_experts is not None:
            allowed = choose_subset(per_expert, k, opts.max_experts).tolist()
        tuples, table = self.sized(k, allowed) if opts.k_by_evidence else self.table(k, allowed)
        m = self.graph.membership(features.skill_ids)  # [n, S]
        n_sk = m.sum(axis=1, keepdims=True)
        est = np.where(n_sk > 0, (m @ table[:-1]) / np.maximum(n_sk, 1), table[-1][None, :])
        best = est.argmax(axis=1)  # [n]
        sure = np.zeros(len(queries), dtype=bool)
        lead = np.asarray(allowed)[per_expert[:, allowed].argmax(axis=1)]
        if opts.adaptive_k and k > 1:
            sure = confident(per_expert, stderr, lead, opts.z, opts.confidence)
        experts = self.graph.experts
        out = []
        for i, q in enumerate(queries):
            chosen = [int(lead[i])] if sure[i] else list(tuples[best[i]])
            out.append(Selection(
                q.id, tuple(experts[j] for j in chosen),
                tuple(round(float(per_expert[i, j]), 4) for j in chosen),
                {"profile": {experts[j]: self.graph.evidence(features.skill_ids[i], experts[j])
                             for j in chosen},
                 "ensemble_estimate": round(float(est[i, best[i]]), 4),
                 "k_chosen_by": "evidence" if opts.k_by_evidence else "fixed",
                 "single_best_ensemble": round(float(table[-1].max()), 4)},
                router=self.name, skills=tuple(features.skills[i]),
                success={experts[j]: round(float(per_expert[i, j]), 4) for j in chosen},
                vote_order=True,
            ))
        return out
