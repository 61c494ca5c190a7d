"""`random`: k distinct experts per query, drawn with a seed. A query's draw depends only on the
seed and its id, so it is the same whatever else is in the batch."""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..types import Query, Selection
from .base import RouterBase, check_experts, check_k


class RandomRouter(RouterBase):
    name = "random"

    def select(self, queries: Sequence[Query], k: int, features=None) -> list[Selection]:
        candidates = list(self.config.experts or self.pool.expert_ids)
        check_experts(candidates, self.pool)
        check_k(k, self.pool)
        if k > len(candidates):
            from ..errors import RoutingError

            raise RoutingError(f"k={k} but only {len(candidates)} candidate experts were named.")
        out = []
        for q in queries:
            rng = random.Random(f"{self.config.seed}:{q.id}")
            chosen = tuple(rng.sample(candidates, k))
            out.append(Selection(q.id, chosen, tuple(1.0 for _ in chosen), router=self.name))
        return out
