"""Which experts are loaded, within the pool's `resident_limit` per placement (least recently
used leaves first), and the backend instances that hold them.

A placement (a GPU, a server, or `default`) holds its own resident set; only its worker thread
loads or releases there, so loads on different placements run at the same time.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from ..registry import BACKENDS
from ..types import ExpertSpec
from .stats import ExecutionStats

DEFAULT_PLACEMENT = "default"


class BackendSet:
    """One backend instance per backend name, created on first use (thread-safe)."""

    def __init__(self, context, overrides: dict[str, object] | None = None):
        self.context = context
        self._instances: dict[str, object] = dict(overrides or {})
        self._lock = threading.Lock()

    def get(self, name: str):
        backend = self._instances.get(name)
        if backend is None:
            with self._lock:
                if name not in self._instances:
                    self._instances[name] = BACKENDS.get(name)(self.context)
                backend = self._instances[name]
        return backend

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
        self._lanes: dict[str, OrderedDict[str, None]] = {}  # placement -> LRU of expert ids
        self._placement_of: dict[str, str] = {}
        self._lock = threading.Lock()  # guards the two tables, never held during a load

    @property
    def resident(self) -> list[str]:
        """Loaded experts, least recently used first (placement by placement)."""
        with self._lock:
            return [e for lane in self._lanes.values() for e in lane]

    def resident_on(self, placement: str) -> list[str]:
        with self._lock:
            return list(self._lanes.get(placement, ()))

    def placement_of(self, expert_id: str) -> str | None:
        """The placement a resident expert is loaded on (None when not loaded)."""
        return self._placement_of.get(expert_id)

    def ensure(self, expert_id: str, stats: ExecutionStats, placement: str = DEFAULT_PLACEMENT,
               spec: ExpertSpec | None = None) -> None:
        """Load `expert_id` on `placement` (with `spec`: its spec with the placement resolved)
        unless it is already there, first releasing least recently used experts of that
        placement beyond the limit, and the expert itself from any other placement."""
        with self._lock:
            lane = self._lanes.setdefault(placement, OrderedDict())
            if expert_id in lane:
                lane.move_to_end(expert_id)
                return
            elsewhere = self._placement_of.get(expert_id)
        if elsewhere is not None:
            self.release(expert_id, stats)
        while len(lane) >= self.limit:
            self.release(next(iter(lane)), stats)
        spec = spec or self.specs[expert_id]
        start = time.perf_counter()
        self.backends.for_expert(spec).load(spec)
        s = stats.expert(expert_id)
        s.load_s += time.perf_counter() - start
        s.loads += 1
        with self._lock:
            lane[expert_id] = None
            self._placement_of[expert_id] = placement

    def release(self, expert_id: str, stats: ExecutionStats | None = None) -> None:
        with self._lock:
            placement = self._placement_of.pop(expert_id, None)
            if placement is None:
                return
            del self._lanes[placement][expert_id]
        start = time.perf_counter()
        self.backends.for_expert(self.specs[expert_id]).release(expert_id)
        if stats is not None:
            stats.expert(expert_id).release_s += time.perf_counter() - start

    def release_all(self) -> None:
        for expert_id in self.resident:
            self.release(expert_id)
