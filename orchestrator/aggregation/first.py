"""`first`: the answer of the first expert (in selection order) that produced one."""

from __future__ import annotations

from collections.abc import Sequence

from ..types import Aggregate, ExpertOutput, Query, Selection
from .base import AggregatorBase


class FirstAggregator(AggregatorBase):
    name = "first"

    def combine(self, queries: Sequence[Query], outputs: Sequence[Sequence[ExpertOutput]],
                selections: Sequence[Selection | None]) -> list[Aggregate]:
        result = []
        for outs in outputs:
            pick = next((o for o in outs if o.error is None and o.answer is not None), None)
            detail = {"from": pick.expert} if pick else {}
            result.append(Aggregate(pick.answer if pick else None, self.name, detail))
        return result
