"""`topk`: deterministic top-k by the shrunken per-skill success estimates, averaged over the
query's skills. With k by evidence (the default), k is a cap and each query takes the first j
of its ranking, j chosen per skill on validation (`sizing`)."""

from __future__ import annotations

from collections.abc import Sequence

from ..types import Query, Selection
from .base import QueryFeatures, RouterBase, check_k
from .graph import RoutingGraph
from .policy import Policy, choose, top_k
from .sizing import EvidenceTable, size_table, truncate


class TopKRouter(RouterBase):
    name = "topk"
    needs_profile = True

    def __init__(self, pool, config, profile=None):
        super().__init__(pool, config, profile)
        self.graph = RoutingGraph(self.profile)
        self._sizes: dict[int, EvidenceTable] = {}

    def size_table(self, cap: int) -> EvidenceTable:
        """Its ranking of every validation question cut at 1..cap, each vote scored."""
        if cap not in self._sizes:
            skills = self.profile.val_skills
            est, _ = self.graph.skill_estimates(skills)  # [N, E]
            self._sizes[cap] = size_table(
                self.profile, top_k(est, cap), est, self.graph.membership(skills), self.config)
        return self._sizes[cap]

    def select(self, queries: Sequence[Query], k: int,
               features: QueryFeatures | None = None) -> list[Selection]:
        check_k(k, self.pool)
        est, stderr = self.graph.skill_estimates(features.skill_ids)  # [n, E] each
        chosen = choose(est, stderr, Policy.from_config(k, self.config.routing))
        by_evidence = self.config.routing.k_by_evidence and k > 1
        if by_evidence:
            chosen = truncate(chosen, self.size_table(k).sizes(
                self.graph.membership(features.skill_ids)))
        experts = self.graph.experts
        out = []
        for i, q in enumerate(queries):
            ids = tuple(experts[j] for j in chosen[i])
            out.append(Selection(
                q.id, ids, tuple(round(float(est[i, j]), 4) for j in chosen[i]),
                {"profile": {e: self.graph.evidence(features.skill_ids[i], e) for e in ids},
                 "k_chosen_by": "evidence" if by_evidence else "fixed"},
                router=self.name, skills=tuple(features.skills[i]),
                success={experts[j]: round(float(est[i, j]), 4) for j in chosen[i]}))
        return out
