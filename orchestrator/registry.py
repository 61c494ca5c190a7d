"""String-keyed registries. Entries are objects or lazy 'module:attr' strings, so a heavy backend
(torch, vllm) is imported only when a pool actually uses it."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, target: T | str, *, replace: bool = False) -> None:
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = target

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        try:
            target = self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
            self._entries[name] = target
        return target

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


BACKENDS: Registry = Registry("backend")
ROUTERS: Registry = Registry("router")
AGGREGATORS: Registry = Registry("aggregator")

BACKENDS.register("fake", "orchestrator.backends.fake:FakeBackend")
BACKENDS.register("transformers", "orchestrator.backends.transformers_backend:TransformersBackend")
BACKENDS.register("openai_http", "orchestrator.backends.openai_http:OpenAIHTTPBackend")
BACKENDS.register("replay", "orchestrator.backends.replay:ReplayBackend")
BACKENDS.register("vllm", "orchestrator.backends.vllm_backend:VLLMBackend")

ROUTERS.register("fixed", "orchestrator.routing.fixed:FixedRouter")
ROUTERS.register("random", "orchestrator.routing.random:RandomRouter")
ROUTERS.register("topk", "orchestrator.routing.topk:TopKRouter")
ROUTERS.register("knn", "orchestrator.routing.knn:KnnRouter")
ROUTERS.register("symbolic-moe", "orchestrator.routing.symbolic_moe:SymbolicMoERouter")
ROUTERS.register("ensemble", "orchestrator.routing.ensemble:EnsembleRouter")

AGGREGATORS.register("first", "orchestrator.aggregation.first:FirstAggregator")
AGGREGATORS.register("vote", "orchestrator.aggregation.vote:VoteAggregator")
AGGREGATORS.register("fuse", "orchestrator.aggregation.fuse:FuseAggregator")
