"""`vote`: weighted majority over the experts' extracted answers. Failed experts and unreadable
answers do not vote.

Weights come from the profile: the experts' estimated success on the query's skills, which
profile routers put in `selection.success`. With `aggregation.weighting`:
  log-odds (default)  w = log(p / (1 - p)) + log(L - 1), L the number of options (10 without
                      options): the optimal weighted majority for independent experts whose
                      wrong answers spread over the L - 1 other options, floored at 0.
  linear              w = p
  none                w = 1 (plain majority)
  auto                log-odds, except for selections whose order the router already tuned
                      for a plain vote (`ensemble`: `selection.vote_order`), which weighting
                      would undo (measured: -1.0 point on the 13-model replay pool)
Without estimates every weight is 1, so it is the plain majority. The answer with the largest
total weight wins; ties go to the answer backed by the heaviest single expert, then to the
earliest expert in selection order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..benchmarks.extract import equivalent_answers
from ..errors import ConfigError
from ..types import Aggregate, ExpertOutput, Query, Selection
from ..workers.stats import ExecutionStats
from .base import AggregatorBase, spoken_by
from .escalation import vote_next_calls


def majority(answers: Sequence[str | None],
             weights: Sequence[float] | None = None) -> tuple[str | None, dict[str, float]]:
    weights = weights if weights is not None else [1.0] * len(answers)
    totals: dict[str, float] = {}
    heaviest: dict[str, float] = {}
    first_seen: dict[str, int] = {}
    for i, (answer, w) in enumerate(zip(answers, weights)):
        if answer is None:
            continue
        totals[answer] = totals.get(answer, 0.0) + w
        heaviest[answer] = max(heaviest.get(answer, -math.inf), w)
        first_seen.setdefault(answer, i)
    if not totals:
        return None, totals
    winner = min(totals, key=lambda a: (-round(totals[a], 9), -heaviest[a], first_seen[a]))
    return winner, totals


def expert_weight(p: float, n_options: int, mode: str) -> float:
    if mode == "none":
        return 1.0
    p = min(max(p, 1e-3), 1 - 1e-3)
    if mode == "linear":
        return p
    return max(0.0, math.log(p / (1 - p)) + math.log(max(n_options, 2) - 1))


def vote_weights(p, n_options, mode: str):
    """`expert_weight` over arrays (broadcast): estimated success [..] and option counts."""
    import numpy as np

    p = np.clip(np.asarray(p, dtype=np.float64), 1e-3, 1 - 1e-3)
    if mode == "none":
        return np.ones_like(p)
    if mode == "linear":
        return p
    lo = np.log(p / (1 - p)) + np.log(np.maximum(np.asarray(n_options), 2) - 1)
    return np.maximum(0.0, lo)


class VoteAggregator(AggregatorBase):
    name = "vote"

    def next_calls(self, item: Query, selection: Selection, outputs: Sequence[ExpertOutput],
                   mode: str) -> int:
        left = len(selection.experts) - len(outputs)
        if mode == "none" or not left:
            return left
        weights = self.expert_weights(item, selection.experts, selection)
        opts = self.config.escalation
        said = equivalent_answers([o.answer if o.error is None else None for o in outputs],
                                  item.answer_type)
        return vote_next_calls(said,
                               weights[:len(outputs)], weights[len(outputs):],
                               confident=mode == "confident", agreement=opts.agreement,
                               min_votes=opts.min_votes)

    def weights(self, query: Query, outs: Sequence[ExpertOutput],
                selection: Selection | None) -> list[float]:
        return self.expert_weights(query, [o.expert for o in outs], selection)

    def expert_weights(self, query: Query, experts: Sequence[str],
                       selection: Selection | None) -> list[float]:
        success: Mapping[str, float] = selection.success if selection else {}
        mode = self.config.aggregation.weighting
        if mode == "auto":
            mode = "none" if selection is not None and selection.vote_order else "log-odds"
        if not success or mode == "none":
            return [1.0] * len(experts)
        n_options = len(query.options) or 10
        return [expert_weight(success[e], n_options, mode) if e in success else 1.0
                for e in experts]

    def combine(self, items: Sequence[Query], outputs: Sequence[Sequence[ExpertOutput]],
                selections: Sequence[Selection | None], stats: ExecutionStats | None = None
                ) -> list[Aggregate]:
        result = []
        for query, outs, selection in zip(items, outputs, selections):
            if not isinstance(query, Query):
                raise ConfigError("The vote aggregator compares extracted answers, which a "
                                  "conversation has none of; use fuse or first.")
            answers = equivalent_answers([o.answer if o.error is None else None for o in outs],
                                         query.answer_type)
            weights = self.weights(query, outs, selection)
            winner, totals = majority(answers, weights)
            agree = len(totals) == 1 and all(a is not None for a in answers)
            result.append(spoken_by(outs, winner, self.name, {
                "votes": {a: round(w, 4) for a, w in totals.items()},
                "weights": [round(w, 4) for w in weights], "unanimous": agree,
            }))
        return result
