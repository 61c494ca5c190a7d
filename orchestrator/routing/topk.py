"""`topk`: deterministic top-k by the shrunken per-skill success estimates, averaged over the
query's skills."""

from __future__ import annotations

from collections.abc import Sequence

from ..types import Query, Selection
from .base import QueryFeatures, RouterBase, check_k
from .graph import RoutingGraph
from .policy import Policy, choose


class TopKRouter(RouterBase):
    name = "topk"
    needs_profile = True

    def __init__(self, pool, config, profile=None):
        super().__init__(pool, config, profile)
        self.graph = RoutingGraph(self.profile)

    def select(self, queries: Sequence[Query], k: int,
               features: QueryFeatures | None = None) -> list[Selection]:
        check_k(k, self.pool)
        est, stderr = self.graph.skill_estimates(features.skill_ids)  # [n, E] each
        chosen = choose(est, stderr, Policy.from_config(k, self.config.routing))
        experts = self.graph.experts
        out = []
        for i, q in enumerate(queries):
            ids = tuple(experts[j] for j in chosen[i])
            out.append(Selection(
                q.id, ids, tuple(round(float(est[i, j]), 4) for j in chosen[i]),
                {"profile": {e: self.graph.evidence(features.skill_ids[i], e) for e in ids}},
                router=self.name, skills=tuple(features.skills[i]),
                success={experts[j]: round(float(est[i, j]), 4) for j in chosen[i]}))
        return out
