"""`fixed`: the same named experts for every query (or the first k of the pool)."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import RoutingError
from ..types import Query, Selection
from .base import RouterBase, check_experts, check_k


class FixedRouter(RouterBase):
    name = "fixed"

    def experts_for(self, k: int) -> tuple[str, ...]:
        named = self.config.experts
        if named:
            check_experts(named, self.pool)
            if k != len(named):
                raise RoutingError(
                    f"The fixed router was given {len(named)} experts ({', '.join(named)}) but "
                    f"k={k}. Drop --k, or name exactly k experts."
                )
            return tuple(named)
        check_k(k, self.pool)
        return tuple(self.pool.expert_ids[:k])

    def select(self, queries: Sequence[Query], k: int, features=None) -> list[Selection]:
        chosen = self.experts_for(k)
        scores = tuple(1.0 for _ in chosen)
        return [Selection(q.id, chosen, scores, router=self.name) for q in queries]
