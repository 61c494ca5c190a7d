"""The Aggregator contract, batched: `aggregate(queries, outputs, selections) -> aggregates`,
in order.

`outputs[i]` holds query i's expert outputs in selection order; `selections[i]` is the router's
choice (its evidence carries the experts' estimated success when a profile routed it).
Aggregators are built as `cls(pool, config, orch)`; `orch` (the Orchestrator, or None) gives
the ones that generate (fuse) its executor, experts and profile.

Early exit (`aggregation.early_exit`, any aggregator): when every expert answered and all
extracted answers agree, that answer is final and the aggregator is skipped for the query
(method `early-exit`); the summary counts how often.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..config import PoolConfig, RunConfig
from ..types import Aggregate, ExpertOutput, Query, Selection

EARLY_EXIT = "early-exit"


@runtime_checkable
class Aggregator(Protocol):
    name: ClassVar[str]

    def aggregate(self, queries: Sequence[Query], outputs: Sequence[Sequence[ExpertOutput]],
                  selections: Sequence[Selection] | None = None) -> list[Aggregate]: ...


def unanimous(outs: Sequence[ExpertOutput]) -> str | None:
    """The shared answer when every expert answered and all agree (more than one expert)."""
    answers = [o.answer if o.error is None else None for o in outs]
    if len(answers) < 2 or any(a is None for a in answers) or len(set(answers)) != 1:
        return None
    return answers[0]


class AggregatorBase:
    name: ClassVar[str] = "base"

    def __init__(self, pool: PoolConfig, config: RunConfig, orch: Any = None):
        self.pool, self.config, self.orch = pool, config, orch
        self.stats = None  # ExecutionStats of generations an aggregator ran itself

    def aggregate(self, queries: Sequence[Query], outputs: Sequence[Sequence[ExpertOutput]],
                  selections: Sequence[Selection] | None = None) -> list[Aggregate]:
        """Early exit where it applies, `combine` for the rest (in one batch)."""
        selections = selections or [None] * len(queries)
        result: list[Aggregate | None] = [None] * len(queries)
        todo = []
        for i, outs in enumerate(outputs):
            agreed = unanimous(outs) if self.config.aggregation.early_exit else None
            if agreed is not None:
                result[i] = Aggregate(agreed, EARLY_EXIT, {"skipped": self.name})
            else:
                todo.append(i)
        if todo:
            combined = self.combine([queries[i] for i in todo], [outputs[i] for i in todo],
                                    [selections[i] for i in todo])
            for i, agg in zip(todo, combined):
                result[i] = agg
        return result  # type: ignore[return-value]

    def combine(self, queries: Sequence[Query], outputs: Sequence[Sequence[ExpertOutput]],
                selections: Sequence[Selection | None]) -> list[Aggregate]:
        raise NotImplementedError
