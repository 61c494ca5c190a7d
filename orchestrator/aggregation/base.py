"""The Aggregator contract, batched: `aggregate(queries, outputs) -> aggregates`, in order.

`outputs[i]` holds query i's expert outputs in selection order. Aggregators are built as
`cls(pool, config)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

from ..config import PoolConfig, RunConfig
from ..types import Aggregate, ExpertOutput, Query


@runtime_checkable
class Aggregator(Protocol):
    name: ClassVar[str]

    def aggregate(
        self, queries: Sequence[Query], outputs: Sequence[Sequence[ExpertOutput]]
    ) -> list[Aggregate]: ...


class AggregatorBase:
    name: ClassVar[str] = "base"

    def __init__(self, pool: PoolConfig, config: RunConfig):
        self.pool, self.config = pool, config
