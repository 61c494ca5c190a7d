"""`first`: the reply of the first expert (in selection order, i.e. the best routed) that
answered. For a task, the first that stated a readable answer; for a conversation, the first
that replied at all."""

from __future__ import annotations

from collections.abc import Sequence

from ..types import Aggregate, Conversation, ExpertOutput, Selection, Work
from ..workers.stats import ExecutionStats
from .base import AggregatorBase


class FirstAggregator(AggregatorBase):
    name = "first"

    def next_calls(self, item: Work, selection: Selection, outputs: Sequence[ExpertOutput],
                   mode: str) -> int:
        """Lossless: one expert at a time until one answered (the first that did wins)."""
        left = len(selection.experts) - len(outputs)
        if mode == "none":
            return left
        chat = isinstance(item, Conversation)
        if any(o.error is None and (chat or o.answer is not None) for o in outputs):
            return 0
        return min(1, left)

    def combine(self, items: Sequence[Work], outputs: Sequence[Sequence[ExpertOutput]],
                selections: Sequence[Selection | None], stats: ExecutionStats
                ) -> list[Aggregate]:
        result = []
        for item, outs in zip(items, outputs):
            chat = isinstance(item, Conversation)
            pick = next((o for o in outs if o.error is None and (chat or o.answer is not None)),
                        None)
            if pick is None:
                result.append(Aggregate(None, self.name, {}))
                continue
            result.append(Aggregate(pick.answer, self.name, {"from": pick.expert},
                                    text=pick.text, source=pick.expert,
                                    finish_reason=pick.finish_reason))
        return result
