"""`vote`: majority over the experts' extracted answers; a tie goes to the answer of the
earliest expert in selection order. Failed experts and unreadable answers do not vote."""

from __future__ import annotations

from collections.abc import Sequence

from ..types import Aggregate, ExpertOutput, Query
from .base import AggregatorBase


def majority(answers: Sequence[str | None]) -> tuple[str | None, dict[str, int]]:
    counts: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        counts[answer] = counts.get(answer, 0) + 1
        first_seen.setdefault(answer, i)
    if not counts:
        return None, counts
    winner = min(counts, key=lambda a: (-counts[a], first_seen[a]))
    return winner, counts


class VoteAggregator(AggregatorBase):
    name = "vote"

    def aggregate(
        self, queries: Sequence[Query], outputs: Sequence[Sequence[ExpertOutput]]
    ) -> list[Aggregate]:
        result = []
        for outs in outputs:
            answers = [o.answer if o.error is None else None for o in outs]
            winner, counts = majority(answers)
            agree = len(counts) == 1 and all(a is not None for a in answers)
            result.append(Aggregate(winner, self.name, {"votes": counts, "unanimous": agree}))
        return result
