"""The Router contract: `select(queries, k) -> selections`, one per query, in order.

A router never generates text. Routers are built as `cls(pool, config)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..config import PoolConfig, RunConfig
from ..errors import RoutingError
from ..types import Query, Selection


@dataclass(frozen=True)
class QueryFeatures:
    """What the annotate stage computed for a batch, aligned with the queries."""

    skills: list[tuple[str, ...]]  # the annotator's skills
    skill_ids: list[tuple[int, ...]]  # the same mapped onto the profile's vocabulary
    embeddings: Any = None  # [n, d] float32 unit rows, when the router needs them


@runtime_checkable
class Router(Protocol):
    name: ClassVar[str]
    needs_profile: ClassVar[bool]
    needs_embeddings: ClassVar[bool]

    def select(self, queries: Sequence[Query], k: int,
               features: QueryFeatures | None = None) -> list[Selection]: ...


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
    needs_profile: ClassVar[bool] = False
    needs_embeddings: ClassVar[bool] = False

    def __init__(self, pool: PoolConfig, config: RunConfig, profile=None):
        self.pool, self.config, self.profile = pool, config, profile
        if self.needs_profile and profile is None:
            raise RoutingError(
                f"The {self.name} router routes with a skill profile; pass --profile "
                "PROFILE.json (build one with `orchestrate profile`)."
            )
