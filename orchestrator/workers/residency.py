"""Which experts are loaded, within the pool's `resident_limit` (least recently used leaves
first), and the backend instances that hold them."""

from __future__ import annotations

import time
from collections import OrderedDict

from ..registry import BACKENDS
from ..types import ExpertSpec
from .stats import ExecutionStats


class BackendSet:
    """One backend instance per backend name, created on first use."""

    def __init__(self, context, overrides: dict[str, object] | None = None):
        self.context = context
        self._instances: dict[str, object] = dict(overrides or {})

    def get(self, name: str):
        if name not in self._instances:
            self._instances[name] = BACKENDS.get(name)(self.context)
        return self._instances[name]

    def for_expert(self, spec: ExpertSpec):
        return self.get(spec.backend)

    def instances(self) -> dict[str, object]:
        return dict(self._instances)

    def close(self) -> None:
        for backend in self._instances.values():
            backend.close()


class Residency:
    def __init__(self, specs: dict[str, ExpertSpec], backends: BackendSet, limit: int):
        self.specs, self.backends, self.limit = specs, backends, max(1, limit)
        self._resident: OrderedDict[str, None] = OrderedDict()

    @property
    def resident(self) -> list[str]:
        """Loaded experts, least recently used first."""
        return list(self._resident)

    def ensure(self, expert_id: str, stats: ExecutionStats) -> None:
        if expert_id in self._resident:
            self._resident.move_to_end(expert_id)
            return
        while len(self._resident) >= self.limit:
            self.release(next(iter(self._resident)), stats)
        spec = self.specs[expert_id]
        start = time.perf_counter()
        self.backends.for_expert(spec).load(spec)
        s = stats.expert(expert_id)
        s.load_s += time.perf_counter() - start
        s.loads += 1
        self._resident[expert_id] = None

    def release(self, expert_id: str, stats: ExecutionStats | None = None) -> None:
        if expert_id not in self._resident:
            return
        del self._resident[expert_id]
        start = time.perf_counter()
        self.backends.for_expert(self.specs[expert_id]).release(expert_id)
        if stats is not None:
            stats.expert(expert_id).release_s += time.perf_counter() - start

    def release_all(self) -> None:
        for expert_id in list(self._resident):
            self.release(expert_id)
