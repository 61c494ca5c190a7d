"""The Aggregator contract, batched: `aggregate(items, outputs, selections, stats) -> aggregates`,
in order.

`items[i]` is a task (`Query`) or a conversation; `outputs[i]` holds its expert outputs in
selection order; `selections[i]` is the router's choice (`selection.success` carries the
experts' estimated success when a profile routed it). Aggregators are built as
`cls(pool, config, generation, profile)`: `generation` is the narrow generation interface
(`orchestrator.generation.Generation`) for the ones that write text (fuse), never the
Orchestrator. Generations an aggregator runs are added to `stats`.

Every aggregate carries the reply a user reads (`text`, `source`, `finish_reason`): the fused
response, or the response of an expert whose answer won.

Early exit (`aggregation.early_exit`, any aggregator, tasks only): when every expert answered
and all extracted answers agree, that answer is final and the aggregator is skipped for the
item (method `early-exit`); the summary counts how often.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..benchmarks.extract import equivalent_answers
from ..config import PoolConfig, RunConfig
from ..types import Aggregate, AnswerType, ExpertOutput, Selection, Work
from ..workers.stats import ExecutionStats

EARLY_EXIT = "early-exit"


@runtime_checkable
class Aggregator(Protocol):
    name: ClassVar[str]

    def aggregate(self, items: Sequence[Work], outputs: Sequence[Sequence[ExpertOutput]],
                  selections: Sequence[Selection] | None = None,
                  stats: ExecutionStats | None = None) -> list[Aggregate]: ...


def unanimous(outs: Sequence[ExpertOutput], answer_type: AnswerType = "text") -> str | None:
    """The shared answer when every expert answered and all agree (more than one expert;
    answers that say the same, "x=5" and "5", agree: `extract.equivalent_answers`)."""
    answers = equivalent_answers([o.answer if o.error is None else None for o in outs],
                                 answer_type)
    if len(answers) < 2 or any(a is None for a in answers) or len(set(answers)) != 1:
        return None
    return answers[0]


def spoken_by(outs: Sequence[ExpertOutput], answer: str | None,
              method: str, detail: dict[str, Any] | None = None) -> Aggregate:
    """`answer` with the reply of the first expert who gave it (else the first that answered)."""
    ok = [o for o in outs if o.error is None]
    pick = next((o for o in ok if answer is not None and o.answer == answer), ok[0] if ok else None)
    return Aggregate(answer, method, detail or {}, text=pick.text if pick else None,
                     source=pick.expert if pick else None,
                     finish_reason=pick.finish_reason if pick else None)


class AggregatorBase:
    name: ClassVar[str] = "base"

    def __init__(self, pool: PoolConfig, config: RunConfig, generation: Any = None,
                 profile: Any = None):
        self.pool, self.config, self.generation, self.profile = pool, config, generation, profile

    def aggregate(self, items: Sequence[Work], outputs: Sequence[Sequence[ExpertOutput]],
                  selections: Sequence[Selection] | None = None,
                  stats: ExecutionStats | None = None) -> list[Aggregate]:
        """Early exit where it applies, `combine` for the rest (in one batch)."""
        selections = selections or [None] * len(items)
        result: list[Aggregate | None] = [None] * len(items)
        todo = []
        for i, outs in enumerate(outputs):
            kind = getattr(items[i], "answer_type", "text")
            agreed = unanimous(outs, kind) if self.config.aggregation.early_exit else None
            if agreed is not None:
                result[i] = spoken_by(outs, agreed, EARLY_EXIT, {"skipped": self.name})
            else:
                todo.append(i)
        if todo:
            combined = self.combine([items[i] for i in todo], [outputs[i] for i in todo],
                                    [selections[i] for i in todo], stats or ExecutionStats())
            for i, agg in zip(todo, combined):
                result[i] = agg
        return result  # type: ignore[return-value]

    def next_calls(self, item: Work, selection: Selection, outputs: Sequence[ExpertOutput],
                   mode: str) -> int:
        """How many more of `selection`'s experts to call after `outputs` (those called so
        far, in order); 0: the aggregate cannot change. By default every expert is called
        (an aggregator that reads every response, like fuse, cannot stop early)."""
        return len(selection.experts) - len(outputs)

    def combine(self, items: Sequence[Work], outputs: Sequence[Sequence[ExpertOutput]],
                selections: Sequence[Selection | None], stats: ExecutionStats
                ) -> list[Aggregate]:
        raise NotImplementedError
