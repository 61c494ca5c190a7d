"""`symbolic-moe`: skill-based recruiting as in Symbolic-MoE (arXiv 2503.05641, section 3.2).

Per query q with skills K(q) and expert e:
  local[q, e]  = sum_{s in K(q)} score[e, s]          (the profile's +1/-1 sums)
  global[e]    = softmax(strength[e] / (T * max|strength|)), T = 0.5 by default
                 (strength = the expert's scores summed over all skills)
  p(e | q)     proportional to max(local[q, e], 0) * global[e]  (global alone if all are 0)
k experts are sampled from p with replacement (seeded per query id, so a duplicate expert votes
twice, as in the paper).

Options: adaptive k (a query whose best expert by the profile's per-skill estimates is
confidently good goes to it alone); load-aware assignment (draws only from the subset of
`max_experts` experts that best covers the batch); `replace_rare`: experts drawn for less than
`min_share` of the batch's draws are replaced by the query's most probable frequent expert, so
that the batch loads fewer models (the paper's frequency threshold, 5%).

With k by evidence (the default), k is a cap: each query's draws are cut to the size j whose
vote of the first j draws did best on validation for its skills (`sizing`; the first j of k
seeded draws are exactly j seeded draws).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..types import Query, Selection
from .base import QueryFeatures, RouterBase, check_k
from .graph import RoutingGraph
from .policy import choose_subset, confident
from .sizing import EvidenceTable, size_table


class SymbolicMoERouter(RouterBase):
    name = "symbolic-moe"
    needs_profile = True

    def __init__(self, pool, config, profile=None):
        super().__init__(pool, config, profile)
        self.graph = RoutingGraph(self.profile)
        opts = config.routing
        self.temperature, self.min_share, self.replace_rare = (
            opts.temperature, opts.min_share, opts.replace_rare)
        strength = self.profile.strength.astype(np.float64)
        z = strength / (self.temperature * max(np.abs(strength).max(), 1e-9))
        g = np.exp(z - z.max())
        self.global_weight = g / g.sum()  # [E]
        self._sizes: dict[int, EvidenceTable] = {}

    def draw(self, qid: str, p: np.ndarray, k: int) -> list[int]:
        """k experts drawn from p with replacement, seeded by the question's id."""
        rng = random.Random(f"{self.config.seed}:{qid}")
        return rng.choices(range(len(p)), weights=p.tolist(), k=k)

    def size_table(self, cap: int) -> EvidenceTable:
        """Its draws for every validation question, the votes of the first 1..cap scored."""
        if cap not in self._sizes:
            skills = self.profile.val_skills
            p = self.probabilities(skills)
            chosen = np.array([self.draw(qid, p[i], cap)
                               for i, qid in enumerate(self.profile.val_ids)],
                              dtype=np.int64).reshape(len(skills), cap)
            success, _ = self.graph.skill_estimates(skills)
            self._sizes[cap] = size_table(
                self.profile, chosen, success, self.graph.membership(skills), self.config)
        return self._sizes[cap]

    def probabilities(self, skill_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """[n, E] recruiting distribution per query."""
        local = self.graph.membership(skill_ids) @ self.graph.scores.T  # [n, E]
        w = np.maximum(local, 0.0) * self.global_weight[None, :]
        empty = w.sum(axis=1, keepdims=True) <= 0
        w = np.where(empty, self.global_weight[None, :], w)
        return w / w.sum(axis=1, keepdims=True)

    def select(self, queries: Sequence[Query], k: int,
               features: QueryFeatures | None = None) -> list[Selection]:
        check_k(k, self.pool)
        p = self.probabilities(features.skill_ids)
        opts = self.config.routing
        if opts.max_experts is not None:  # load-aware: draw only from the best-covering subset
            keep = choose_subset(p, k, opts.max_experts)
            mask = np.zeros(p.shape[1], dtype=bool)
            mask[keep] = True
            p = np.where(mask[None, :], p, 0.0)
            p = np.where(p.sum(axis=1, keepdims=True) > 0, p, mask[None, :].astype(float))
            p = p / p.sum(axis=1, keepdims=True)
        success, stderr = self.graph.skill_estimates(features.skill_ids)  # [n, E] each
        sizes = [k] * len(queries)
        by_evidence = opts.k_by_evidence and k > 1
        if by_evidence:
            sizes = self.size_table(k).sizes(
                self.graph.membership(features.skill_ids)).tolist()
        sure = np.zeros(len(queries), dtype=bool)
        if opts.adaptive_k and k > 1:  # a sure leader answers alone
            lead = np.argmax(np.where(p > 0, success, -1.0), axis=1)
            sure = confident(success, stderr, lead, opts.z, opts.confidence)
        experts = self.graph.experts
        draws = [[int(lead[i])] if sure[i] else self.draw(q.id, p[i], sizes[i])
                 for i, q in enumerate(queries)]
        if self.replace_rare and len(queries) > 1:
            share = Counter(j for d in draws for j in d)
            total = sum(share.values())
            frequent = {j for j, c in share.items() if c / total >= self.min_share}
            if frequent:
                for i, d in enumerate(draws):
                    best = max(frequent, key=lambda j: p[i, j])
                    draws[i] = [j if j in frequent else best for j in d]
        out = []
        for i, q in enumerate(queries):
            ids = tuple(experts[j] for j in draws[i])
            out.append(Selection(
                q.id, ids, tuple(round(float(p[i, j]), 4) for j in draws[i]),
                {"profile": {e: self.graph.evidence(features.skill_ids[i], e) for e in set(ids)},
                 "k_chosen_by": "evidence" if by_evidence else "fixed"},
                router=self.name, skills=tuple(features.skills[i]),
                success={experts[j]: round(float(success[i, j]), 4) for j in set(draws[i])}))
        return out
