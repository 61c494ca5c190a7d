"""The Router contract: `select(queries, k) -> selections`, one per query, in order.

A router never generates text. Routers are built as `cls(pool, config)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

from ..config import PoolConfig, RunConfig
from ..errors import RoutingError
from ..types import Query, Selection


@runtime_checkable
class Router(Protocol):
    name: ClassVar[str]

    def select(self, queries: Sequence[Query], k: int) -> list[Selection]: ...


def check_k(k: int, pool: PoolConfig) -> None:
    size = len(pool.experts)
    if not 1 <= k <= size:
        raise RoutingError(
            f"k={k} is outside 1..{size}: pool '{pool.name}' has {size} experts. "
            f"Pass --k between 1 and {size}."
        )


def check_experts(names: Sequence[str], pool: PoolConfig) -> None:
    from ..errors import UnknownNameError

    known = pool.expert_ids
    for name in names:
        if name not in known:
            raise UnknownNameError("expert", name, known, f" (pool '{pool.name}')")
    if len(set(names)) != len(names):
        raise RoutingError(f"Experts {list(names)} name one expert twice; name each once.")


class RouterBase:
    name: ClassVar[str] = "base"

    def __init__(self, pool: PoolConfig, config: RunConfig):
        self.pool, self.config = pool, config
